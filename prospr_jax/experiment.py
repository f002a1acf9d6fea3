"""The testable driver: ``prune_and_train(config, workdir)`` and ``train_and_evaluate(config, workdir)``.

Prune at initialization with the configured criterion, then train the pruned
network from its initial weights with the paper's recipe, evaluating and
checkpointing every epoch. A rerun with the same workdir resumes on its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from chex import ArrayTree
from jax.sharding import Mesh

from prospr_jax import (
  compaction,
  cost,
  data,
  files,
  masks as masks_lib,
  models,
  pruned_network,
  pruning,
  seeds,
  sharding,
  trainer,
  validation,
  workdir as workdir_lib,
)
from prospr_jax.models import conv as conv_lib, get_model
from prospr_jax.sparsity import percent

log = logging.getLogger(__name__)
RESULTS_FILE = 'results.json'
# Written when training ends: a raised num_epochs makes them stale, so they are deleted before it is recorded.
FINAL_FILES = (RESULTS_FILE, compaction.TRAINED_FILE)


@dataclasses.dataclass(frozen=True)
class Setup:
  info: data.DatasetInfo
  model: nn.Module
  variables: ArrayTree  # the initialisation every network here starts from
  mesh: Mesh
  train_source: Any
  eval_source: Any


def init_variables(model: nn.Module, info: data.DatasetInfo, key: jax.Array) -> ArrayTree:
  """The model's variables (params, BatchNorm statistics) drawn from ``key``."""
  return models.init_variables(model, info.input_shape, key)


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
  conv = conv_lib.resolve_conv_impl(config.conv_impl, column_mib=config.get('conv_column_mib'))
  log.info('conv_impl %s on %s: %s', config.conv_impl, jax.default_backend(),
           'lax.conv_general_dilated' if conv is None else conv.__name__)
  model = get_model(config.model, info.num_classes, conv_general_dilated=conv, **config.model_kwargs)
  check_input_size(model, info, config)
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


def check_input_size(model: nn.Module, info: data.DatasetInfo, config: ml_collections.ConfigDict) -> None:
  """Refuse a model whose layers shrink the dataset's images to nothing (VGG-16's pools on 8x8 digits), naming the
  layer and the input size, before its initialiser divides by zero or its scores turn NaN."""
  emptied = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__' and not emptied:
      emptied.extend(f'{"/".join(context.module.path)} {np.shape(leaf)}' for leaf in jax.tree.leaves(out)
                     if 0 in np.shape(leaf))
    return out

  try:
    with nn.intercept_methods(record):
      jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                     jax.ShapeDtypeStruct((1, *info.input_shape), jnp.float32))
  except ZeroDivisionError:  # an initialiser's fan-in of 0, after the layer recorded below
    if not emptied:
      raise
  if emptied:
    size = 'x'.join(map(str, info.input_shape))
    raise validation.ConfigError(f'config.model={config.model!r} is too deep for the {size} images of '
                                 f'{config.dataset}: its output at {emptied[0]} is empty; choose a model for inputs '
                                 'this small (small_cnn, lenet300) or a dataset with larger images')


@contextlib.contextmanager
def claimed(config: ml_collections.ConfigDict, workdir: pathlib.Path,
            validate: Callable[[ml_collections.ConfigDict], None] = validation.validate_config) -> Iterator[None]:
  """Validate ``config``, then hold ``workdir`` for this run: its lock (process 0), its recorded config checked."""
  validate(config)
  workdir.mkdir(parents=True, exist_ok=True)
  with workdir_lib.locked(workdir) if jax.process_index() == 0 else contextlib.nullcontext():
    workdir_lib.check_config(workdir, config, write=jax.process_index() == 0, final_files=FINAL_FILES)
    yield


def prune_and_train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Prune at initialization with ``config.criterion``, train the pruned network, report; resumable."""
  workdir = pathlib.Path(workdir)
  with claimed(config, workdir):
    setup = make_setup(config)
    mask_path = workdir / 'mask.npz'
    if mask_path.exists():  # written last by the pruning step, under this same config (check_config)
      mask = pruned_network.load_mask(config, setup, mask_path)
      log.info('Using the mask already in %s', mask_path)
    else:
      mask = pruning.prune(config, setup.model, setup.variables, setup.info, setup.train_source, setup.mesh,
                           workdir)
    results = mask_results(config, setup, mask)
    pruned_setup, pruned_mask = pruned_network.build(config, setup, mask, workdir)  # compact: saved, measured
    if config.num_epochs == 0:
      return results
    network = 'compact' if config.prune.structured and config.prune.compact else 'pruned'
    results['pruned'] = trainer.train(config, pruned_setup, pruned_mask, workdir / 'pruned',
                                      title=trainer.network_title(config, network))
    pruned_network.export_trained(config, pruned_setup, pruned_mask, workdir / 'pruned', workdir)
    if config.compare_dense:
      results['dense'] = trainer.train(config, setup, masks_lib.all_ones_mask(setup.variables['params']),
                                       workdir / 'dense', title=trainer.network_title(config, 'dense'))
    if jax.process_index() == 0:
      files.write_json(workdir / RESULTS_FILE, results)
      print(format_results(config, results), flush=True)
      print_costs(workdir)
    return results


def mask_results(config: ml_collections.ConfigDict, setup: Setup, mask: ArrayTree) -> dict[str, Any]:
  """What the mask keeps: weights, and channels when structured."""
  entries, weights = pruned_network.reports(config, setup, mask)
  results = {'criterion': config.criterion, 'sparsity': config.prune.sparsity,
             'weight_sparsity': 1.0 - weights.density, 'kept_weights': weights.kept}
  if config.prune.structured:
    results.update(channel_sparsity=1.0 - entries.density, kept_channels=entries.kept)
  return results


def print_costs(workdir: pathlib.Path) -> None:
  """The dense and the compact network's costs side by side, if this run compacted."""
  path = workdir / pruned_network.COST_FILE
  if path.exists():
    costs = json.loads(path.read_text())
    print(f'dense against compact on {costs["device"]} (train step at batch {costs["batch_size"]}):\n'
          + cost.comparison_table({name: costs[name] for name in ('dense', 'compact')}), flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, float]:
  """Train dense, or with the mask at ``config.mask_path`` (a ``mask.npz`` written by prune.py); compact if
  the mask is a channel mask (``config.prune.structured``) and ``config.prune.compact``."""
  workdir = pathlib.Path(workdir)
  with claimed(config, workdir):
    setup = make_setup(config)
    params = setup.variables['params']
    if config.mask_path:
      mask = load_mask_for(config, setup)
      entries, weights = pruned_network.reports(config, setup, mask)
    else:  # dense is dense: a weight mask of ones, and no channel to report, whatever config.prune.structured says
      mask = masks_lib.all_ones_mask(params)
      entries, weights = pruned_network.mask_reports(setup.model, params, mask, structured=False)
    log.info('Training with %.2f%% of the prunable weights (%s):\n%s', 100 * weights.density,
             config.mask_path or 'dense', entries)
    train_setup, train_mask = pruned_network.build(config, setup, mask, workdir) if config.mask_path else (setup, mask)
    compact = config.prune.structured and config.prune.compact
    title = (f'{"compact" if compact else "masked"} network ({1 - weights.density:.1%} weight sparsity, '
             f'{config.mask_path})' if config.mask_path else trainer.network_title(config, 'dense'))
    result = trainer.train(config, train_setup, train_mask, workdir, title=title)
    if config.mask_path:
      pruned_network.export_trained(config, train_setup, train_mask, workdir, workdir)
    if jax.process_index() == 0:
      print(format_results(config, {'pruned': result, 'weight_sparsity': 1.0 - weights.density},
                           name='masked' if config.mask_path else 'dense'), flush=True)
      print_costs(workdir)
    return result


def load_mask_for(config: ml_collections.ConfigDict, setup: Setup) -> ArrayTree:
  """The mask at ``config.mask_path``: a channel mask fitting the model's plan when ``config.prune.structured``,
  else a weight mask naming every prunable layer with its exact shape."""
  if config.prune.structured:
    return pruned_network.load_mask(config, setup, config.mask_path)
  params = setup.variables['params']
  loaded = masks_lib.load_masks(config.mask_path, params)
  per_channel = jax.tree.map(lambda m, p: None if m is None else np.shape(m) != np.shape(p), loaded, params,
                             is_leaf=masks_lib.is_none)
  if any(jax.tree.leaves(per_channel)):
    raise ValueError(f'mask file {config.mask_path} holds one entry per channel: train it with '
                     'config.prune.structured=True')
  return masks_lib.load_masks(config.mask_path, params, template=masks_lib.ones_mask(params))


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
    lines.append(f'{row_name:<24} {percent(weights):>8} ' + (f'{percent(channel):>8} ' if channels else '')
                 + f'{row["eval_top1"]:>8.2%} {row["eval_top5"]:>8.2%}')
  return '\n'.join(lines)
