"""The testable driver: ``prune_and_train(config, workdir)`` and ``train_and_evaluate(config, workdir)``.

Prune at initialization with the configured criterion, then train the pruned
network from its initial weights with the paper's recipe, evaluating and
checkpointing every epoch. A rerun with the same workdir resumes on its own.
"""

from __future__ import annotations

import logging

import dataclasses
import functools
import json
import pathlib
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from jax.sharding import Mesh

from prospr_jax import ablations, checkpointing, data, plots, pruning, sharding, training
from prospr_jax.metrics import MetricsWriter
from prospr_jax.models import conv as conv_lib, get_model

PyTree = Any
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Setup:
  info: data.DatasetInfo
  model: nn.Module
  variables: PyTree  # the initialisation every network here starts from
  mesh: Mesh
  train_source: Any
  eval_source: Any


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field and the fix."""


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Refuse a bad config before any data is read or anything compiles."""
  from prospr_jax import CRITERIA, DISTRIBUTIONS
  from prospr_jax.ablations import ABLATIONS
  from prospr_jax.masks import check_sparsity
  from prospr_jax.models import MODELS
  checks = [
      (config.dataset in data.DATASETS, f'config.dataset={config.dataset!r}: valid names are '
                                        f'{", ".join(sorted(data.DATASETS))}'),
      (config.model in MODELS, f'config.model={config.model!r}: valid names are {", ".join(sorted(MODELS))}'),
      (config.criterion in CRITERIA, f'config.criterion={config.criterion!r}: valid names are '
                                     f'{", ".join(sorted(CRITERIA))}'),
      (config.num_epochs >= 0, f'config.num_epochs must be >= 0, got {config.num_epochs}'),
      (config.prune.num_steps >= 0, f'config.prune.num_steps (M) must be >= 0, got {config.prune.num_steps}'),
      (config.batch_size > 0 and config.prune.batch_size > 0 and config.eval_batch_size > 0,
       'config.batch_size, config.prune.batch_size and config.eval_batch_size must be positive'),
      (not config.prune.streamed or (config.criterion == 'prospr' and config.prune.first_order),
       'config.prune.streamed needs config.criterion="prospr" and config.prune.first_order=True'),
      (config.distribution in DISTRIBUTIONS, f'config.distribution={config.distribution!r}: valid names are '
                                             f'{", ".join(sorted(DISTRIBUTIONS))}'),
      (config.ablation in ABLATIONS, f'config.ablation={config.ablation!r}: valid names are '
                                     f'{", ".join(sorted(ABLATIONS))}'),
      (config.conv_impl in conv_lib.CONV_IMPLS, f'config.conv_impl={config.conv_impl!r}: valid names are '
                                                f'{", ".join(conv_lib.CONV_IMPLS)}'),
  ]
  for ok, message in checks:
    if not ok:
      raise ConfigError(message)
  try:
    check_sparsity(config.prune.sparsity)
  except ValueError as error:
    raise ConfigError(f'config.prune.{error}') from None
  for name in ('batch_size', 'eval_batch_size'):
    if config[name] % jax.device_count():
      raise ConfigError(f'config.{name}={config[name]} is not divisible by the {jax.device_count()} devices')


def make_setup(config: ml_collections.ConfigDict) -> Setup:
  validate_config(config)
  info = data.get_dataset_info(config.dataset)
  data_dir = config.data_dir or None
  train_source = data.load_source(config.dataset, info.train_split, data_dir)
  eval_source = data.load_source(config.dataset, info.eval_split, data_dir)
  conv = conv_lib.resolve_conv_impl(config.conv_impl)
  log.info('conv_impl %s on %s: %s', config.conv_impl, jax.default_backend(),
           'lax.conv_general_dilated' if conv is None else conv.__name__)
  model = get_model(config.model, info.num_classes, conv_general_dilated=conv, **config.model_kwargs)
  init = jax.jit(functools.partial(model.init, train=False))
  variables = init(jax.random.key(config.seed), jnp.zeros((1, *info.input_shape), jnp.float32))
  mesh = sharding.make_mesh()
  sharding.assert_same_on_every_process(np.array([len(train_source), len(eval_source)]),
                                        'the number of records (is every host reading the same dataset?)')
  log.info('%s on %s: %s parameters; %d train / %d eval records; %d devices in %d processes; global batch %d '
               '(%d per process)', config.model, config.dataset,
               f'{sum(x.size for x in jax.tree.leaves(variables["params"])):,}', len(train_source),
               len(eval_source), jax.device_count(), jax.process_count(), config.batch_size,
               data.local_batch_size(config.batch_size))
  return Setup(info, model, variables, mesh, train_source, eval_source)


def _evaluate(state, setup: Setup, eval_fn, batch_size: int) -> dict[str, float]:
  sums = [sharding.host_value(eval_fn(state, sharding.global_batch(batch, setup.mesh)))
          for batch in data.eval_batches(setup.info, setup.eval_source, global_batch_size=batch_size)]
  return training.summarize_eval(sums)


def train(config: ml_collections.ConfigDict, setup: Setup, mask: PyTree, workdir: pathlib.Path,
          title: str = '', variables: PyTree | None = None) -> dict[str, float]:
  """Train ``variables * mask`` (default: ``setup.variables``) for ``config.num_epochs``, resuming from ``workdir``."""
  variables = setup.variables if variables is None else variables
  workdir.mkdir(parents=True, exist_ok=True)
  sharding.check_global_batch_size(config.batch_size, setup.mesh)
  steps_per_epoch = data.steps_per_epoch(len(setup.train_source), config.batch_size)
  total_steps = config.num_epochs * steps_per_epoch
  schedule = training.lr_schedule(config.learning_rate, steps_per_epoch, config.lr_milestones, config.lr_decay)
  optimizer = training.make_optimizer(learning_rate=schedule, momentum=config.momentum,
                                      weight_decay=config.weight_decay)
  rng = jax.random.fold_in(jax.random.key(config.seed), 2)
  state = sharding.replicate(training.create_train_state(variables, mask, optimizer, rng), setup.mesh)
  initial_params = sharding.replicate(variables['params'], setup.mesh)
  checkpointer = checkpointing.Checkpointer(workdir / 'checkpoints')
  metrics = MetricsWriter(workdir / 'metrics.jsonl')
  step = 0
  if checkpointer.latest_step() is not None:
    state, _, meta = checkpointer.restore(state, initial_params)
    metrics.truncate_after(meta['epoch'])
    step = int(sharding.host_value(state.step))
    log.info('Resumed from the checkpoint at step %d (epoch %d) in %s', step, meta['epoch'], workdir)
  loader = data.train_loader(setup.info, setup.train_source, global_batch_size=config.batch_size, seed=config.seed,
                             start_step=step, worker_count=config.worker_count)
  batches = iter(loader)

  # No buffer donation: orbax's async save may still be reading the previous state.
  train_step = jax.jit(functools.partial(training.train_step, model=setup.model, optimizer=optimizer))
  eval_step = jax.jit(functools.partial(training.eval_step, model=setup.model))
  progress = tqdm.tqdm(total=total_steps, initial=step, unit='step',
                       disable=None if jax.process_index() == 0 else True,  # None: only on a terminal
                       desc=title or 'train', dynamic_ncols=True, mininterval=2.0)
  epoch_loss, epoch_accuracy, epoch_start = [], [], time.perf_counter()
  while step < total_steps:
    state, step_metrics = train_step(state, sharding.global_batch(next(batches), setup.mesh))
    step += 1
    epoch_loss.append(step_metrics['loss'])
    epoch_accuracy.append(step_metrics['accuracy'])
    progress.update(1)
    if step % steps_per_epoch == 0:
      seconds = time.perf_counter() - epoch_start
      row = {'epoch': step // steps_per_epoch, 'step': step, 'learning_rate': float(schedule(step - 1)),
             'train_loss': float(np.mean(sharding.host_value(epoch_loss))),
             'train_accuracy': float(np.mean(sharding.host_value(epoch_accuracy))),
             **_evaluate(state, setup, eval_step, config.eval_batch_size),
             'images_per_second': len(epoch_loss) * config.batch_size / seconds}
      metrics.write(row)
      progress.set_postfix(loss=f'{row["train_loss"]:.3f}', top1=f'{row["eval_top1"]:.2%}',
                           img_s=f'{row["images_per_second"]:.0f}')
      log.info('epoch %d: %s', row['epoch'], json.dumps({k: round(v, 4) for k, v in row.items()}))
      checkpointer.save(step, state, initial_params, {'epoch': row['epoch']})
      epoch_loss, epoch_accuracy, epoch_start = [], [], time.perf_counter()
    elif config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
      checkpointer.save(step, state, initial_params, {'epoch': step // steps_per_epoch})
  progress.close()
  checkpointer.wait()
  checkpointer.close()
  rows = metrics.rows()
  if jax.process_index() == 0 and rows:
    plots.plot_learning_curves(rows, workdir / 'learning_curves.png', title=title)
  return rows[-1] if rows else _evaluate(state, setup, eval_step, config.eval_batch_size)


def prune_and_train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Prune at initialization with ``config.criterion``, train the pruned network, report; resumable."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  setup = make_setup(config)
  mask_path = workdir / 'mask.npz'
  if mask_path.exists():
    mask = pruning.load_mask(mask_path, setup.variables['params'])
    log.info('Using the mask already in %s', mask_path)
  else:
    mask = pruning.prune(config, setup.model, setup.variables, setup.info, setup.train_source, setup.mesh, workdir)
  results: dict[str, Any] = {'criterion': config.criterion, 'sparsity': config.prune.sparsity}
  if config.num_epochs == 0:
    return results
  results['pruned'] = train(config, setup, mask, workdir / 'pruned', title=f'{config.criterion} pruned',
                            variables=_ablated_variables(config, setup, mask))
  if config.compare_dense:
    results['dense'] = train(config, setup, training.all_ones_mask(setup.variables['params']), workdir / 'dense',
                             title='dense')
  if jax.process_index() == 0:
    (workdir / 'results.json').write_text(json.dumps(results, indent=2))
    print(format_results(config, results), flush=True)
  return results


def _ablated_variables(config: ml_collections.ConfigDict, setup: Setup, mask: PyTree) -> PyTree:
  """The pruned network's starting point: the initialisation, or for ``ablation='reinit'`` a new draw of it."""
  if config.ablation != 'reinit':
    return setup.variables
  fresh = jax.jit(functools.partial(setup.model.init, train=False))(
      jax.random.key(config.seed + 10_000), jnp.zeros((1, *setup.info.input_shape), jnp.float32))
  return {**setup.variables, 'params': ablations.reinitialize(setup.variables['params'], mask, fresh['params'])}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, float]:
  """Train dense, or with the mask at ``config.mask_path`` (a ``mask.npz`` written by prune.py)."""
  workdir = pathlib.Path(workdir)
  setup = make_setup(config)
  if config.mask_path:
    mask = pruning.load_mask(config.mask_path, setup.variables['params'])
  else:
    mask = training.all_ones_mask(setup.variables['params'])
  return train(config, setup, mask, workdir, title='masked' if config.mask_path else 'dense')


def format_results(config: ml_collections.ConfigDict, results: dict[str, Any]) -> str:
  rows = [('dense', 0.0, results['dense'])] if 'dense' in results else []
  name = config.criterion + ('' if config.ablation == 'none' else f' ({config.ablation})')
  rows.append((name, config.prune.sparsity, results['pruned']))
  lines = [f'{config.model} on {config.dataset}, {config.num_epochs} epochs',
           f'{"network":<24} {"sparsity":>8} {"top-1":>8} {"top-5":>8}']
  for name, sparsity, row in rows:
    lines.append(f'{name:<24} {sparsity:>8.1%} {row["eval_top1"]:>8.2%} {row["eval_top5"]:>8.2%}')
  return '\n'.join(lines)
