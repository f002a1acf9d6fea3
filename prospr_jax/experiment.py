"""The testable driver: ``prune_and_train(config, workdir)`` and ``train_and_evaluate(config, workdir)``.

Prune at initialization with the configured criterion, then train the pruned
network from its initial weights with the paper's recipe, evaluating and
checkpointing every epoch. A rerun with the same workdir resumes on its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import pathlib
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from chex import ArrayTree
from jax.sharding import Mesh

from prospr_jax import (
  ablations,
  data,
  files,
  losses,
  masks as masks_lib,
  pruning,
  seeds,
  sharding,
  trainer,
  validation,
  workdir as workdir_lib,
)
from prospr_jax.criteria import scores as scores_lib
from prospr_jax.models import conv as conv_lib, get_model
from prospr_jax.sparsity import sparsity_report

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Setup:
  info: data.DatasetInfo
  model: nn.Module
  variables: ArrayTree  # the initialisation every network here starts from
  mesh: Mesh
  train_source: Any
  eval_source: Any


@functools.lru_cache(maxsize=16)
def _jitted_init(model: nn.Module):
  return jax.jit(functools.partial(model.init, train=False))  # once per model (modules hash by value)


def init_variables(model: nn.Module, info: data.DatasetInfo, key: jax.Array) -> ArrayTree:
  """The model's variables (params, BatchNorm statistics) drawn from ``key``."""
  return _jitted_init(model)(key, jnp.zeros((1, *info.input_shape), jnp.float32))


def make_setup(config: ml_collections.ConfigDict) -> Setup:
  """Data sources, model, initial variables and mesh of a (valid: ``validate_config``) config."""
  info = data.get_dataset_info(config.dataset)
  data_dir = config.data_dir or None
  train_source = data.load_source(config.dataset, info.train_split, data_dir)
  eval_source = data.load_source(config.dataset, info.eval_split, data_dir)
  for name, size in (('batch_size', config.batch_size), ('prune.batch_size', config.prune.batch_size)):
    if size > len(train_source):
      raise validation.ConfigError(f'config.{name}={size} is more than the {len(train_source)} training records '
                                   f'of {config.dataset}: lower it')
  conv = conv_lib.resolve_conv_impl(config.conv_impl)
  log.info('conv_impl %s on %s: %s', config.conv_impl, jax.default_backend(),
           'lax.conv_general_dilated' if conv is None else conv.__name__)
  model = get_model(config.model, info.num_classes, conv_general_dilated=conv, **config.model_kwargs)
  variables = init_variables(model, info, seeds.model_init(config.seed))
  mesh = sharding.make_mesh()
  sharding.assert_same_on_every_process(np.array([len(train_source), len(eval_source)]),
                                        'the number of records (is every host reading the same dataset?)')
  log.info('%s on %s: %s parameters; %d train / %d eval records; %d devices in %d processes; global batch %d '
               '(%d per process)', config.model, config.dataset,
               f'{sum(x.size for x in jax.tree.leaves(variables["params"])):,}', len(train_source),
               len(eval_source), jax.device_count(), jax.process_count(), config.batch_size,
               sharding.local_batch_size(config.batch_size))
  return Setup(info, model, variables, mesh, train_source, eval_source)


@contextlib.contextmanager
def claimed(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> Iterator[None]:
  """Validate ``config``, then hold ``workdir`` for this run: its lock (process 0), its recorded config checked."""
  validation.validate_config(config)
  workdir.mkdir(parents=True, exist_ok=True)
  with workdir_lib.locked(workdir) if jax.process_index() == 0 else contextlib.nullcontext():
    workdir_lib.check_config(workdir, config, write=jax.process_index() == 0)
    yield


def prune_and_train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Prune at initialization with ``config.criterion``, train the pruned network, report; resumable."""
  workdir = pathlib.Path(workdir)
  with claimed(config, workdir):
    setup = make_setup(config)
    mask_path = workdir / 'mask.npz'
    if mask_path.exists():  # written last by the pruning step, under this same config (check_config)
      mask = masks_lib.load_masks(mask_path, setup.variables['params'])
      log.info('Using the mask already in %s', mask_path)
    else:
      mask = pruning.prune(config, setup.model, setup.variables, setup.info, setup.train_source, setup.mesh,
                           workdir)
    report = sparsity_report(mask, setup.variables['params'])
    results: dict[str, Any] = {'criterion': config.criterion, 'sparsity': config.prune.sparsity,
                               'weight_sparsity': 1.0 - report.density, 'kept_weights': report.kept}
    if config.num_epochs == 0:
      return results
    results['pruned'] = trainer.train(config, setup, mask, workdir / 'pruned', title=f'{config.criterion} pruned',
                                      variables=_ablated_variables(config, setup, mask))
    if config.compare_dense:
      results['dense'] = trainer.train(config, setup, masks_lib.all_ones_mask(setup.variables['params']),
                                       workdir / 'dense', title='dense')
    if jax.process_index() == 0:
      files.write_json(workdir / 'results.json', results)
      print(format_results(config, results), flush=True)
    return results


def _ablated_variables(config: ml_collections.ConfigDict, setup: Setup, mask: ArrayTree) -> ArrayTree:
  """The pruned network's starting point: the initialisation, or for ``ablation='reinit'`` a new draw of it."""
  if config.ablation != 'reinit':
    return setup.variables
  fresh = init_variables(setup.model, setup.info, seeds.reinit_ablation(config.seed))
  return {**setup.variables, 'params': ablations.reinitialize(setup.variables['params'], mask, fresh['params'])}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, float]:
  """Train dense, or with the mask at ``config.mask_path`` (a ``mask.npz`` written by prune.py)."""
  workdir = pathlib.Path(workdir)
  with claimed(config, workdir):
    setup = make_setup(config)
    params = setup.variables['params']
    mask = load_mask_for(config.mask_path, setup) if config.mask_path else masks_lib.all_ones_mask(params)
    report = sparsity_report(mask, params)
    log.info('Training with %.2f%% of the prunable weights (%s):\n%s', 100 * report.density,
             config.mask_path or 'dense', report)
    result = trainer.train(config, setup, mask, workdir, title='masked' if config.mask_path else 'dense')
    if jax.process_index() == 0:
      print(format_results(config, {'pruned': result, 'weight_sparsity': 1.0 - report.density},
                           name='masked' if config.mask_path else 'dense'), flush=True)
    return result


def load_mask_for(path: str, setup: Setup) -> ArrayTree:
  """The mask at ``path``, refused unless it names every prunable layer of this model with its exact shape.

  A weight mask covers every kernel; a channel mask every kernel but the classifier.
  """
  params = setup.variables['params']
  loaded = masks_lib.load_masks(path, params)
  per_channel = jax.tree.map(lambda m, p: None if m is None else np.shape(m) != np.shape(p), loaded, params,
                             is_leaf=masks_lib.is_none)
  if not any(jax.tree.leaves(per_channel)):
    return masks_lib.load_masks(path, params, template=masks_lib.ones_mask(params))
  example = {'image': np.zeros((1, *setup.info.input_shape), np.float32), 'label': np.zeros((1,), np.int32)}
  template = scores_lib.mask_variables(params, example, loss_fn=losses.flax_loss_fn(setup.model, setup.variables),
                                       structured=True, prunable=None)
  return masks_lib.load_masks(path, params, template=template)


def format_results(config: ml_collections.ConfigDict, results: dict[str, Any], name: str | None = None) -> str:
  """The run's table: each network's weight sparsity (and channel sparsity, when structured), top-1 and top-5."""
  if name is None:
    name = config.criterion + ('' if config.ablation == 'none' else f' ({config.ablation})')
  channels = config.prune.structured and 'criterion' in results
  rows = [('dense', 0.0, 0.0, results['dense'])] if 'dense' in results else []
  rows.append((name, results['weight_sparsity'], config.prune.sparsity, results['pruned']))
  header = f'{"network":<24} {"weights":>8} ' + (f'{"channels":>8} ' if channels else '') + f'{"top-1":>8} {"top-5":>8}'
  lines = [f'{config.model} on {config.dataset}, {config.num_epochs} epochs; sparsity of the prunable weights'
           + (' and of the channels' if channels else ''), header]
  for row_name, weights, channel, row in rows:
    lines.append(f'{row_name:<24} {weights:>8.1%} ' + (f'{channel:>8.1%} ' if channels else '')
                 + f'{row["eval_top1"]:>8.2%} {row["eval_top5"]:>8.2%}')
  return '\n'.join(lines)
