"""Two references that prune AFTER training (the paper's Figure 2, from Frankle et al. 2021), run as sweep cells.

Both start from the trained dense network of the same config and seed (the sweep's dense cell,
``cells/dense/seed_<n>``, read from its checkpoints) and prune it ONCE (one shot, not iteratively) by global
magnitude: keep the ``ceil(N * (1 - sparsity))`` largest ``|w|`` of the dense network's FINAL trained weights over
all prunable weights (kernels, ``ndim > 1``: the set every criterion prunes), with the same layer-collapse handling
(``LayerCollapseError``, or one weight kept per layer with ``config.prune.keep_one_per_layer``). The pruned network
is then retrained with the mask given to the trainer as for any criterion, so pruned weights are exactly zero in
every step. BatchNorm statistics (every non-param collection) come from the same point as the weights.

- ``magnitude_after_training`` (Renda et al. 2020, "Comparing rewinding and fine-tuning in neural network
  pruning": learning rate rewinding): retrain the masked network starting from the dense network's final trained
  weights with the full original recipe: ``config.num_epochs`` epochs, the learning-rate schedule from its start,
  a fresh optimizer state (zero momentum). Renda et al. found that this matches or beats fine-tuning at the final
  learning rate. One shot: their iterative variant is not run.
- ``lottery_rewind`` (Frankle et al. 2020, "Linear mode connectivity and the lottery ticket hypothesis": lottery
  ticket rewinding): the same one-shot mask; the surviving weights are rewound to their values at the end of the
  dense run's first epoch (the rewind point) and the pruned network is retrained for the remaining
  ``config.num_epochs - 1`` epochs, the learning-rate schedule (and the data order) continuing from the end of
  epoch 1, so that the total number of epochs equals the recipe's; fresh optimizer state (zero momentum), its
  schedule's step count at the rewind point. Frankle et al.'s LTR is iterative (remove 20% of the remaining
  weights, rewind, retrain, repeat until the sparsity is reached): one full training per round, too costly here.
  This is ONE-SHOT magnitude pruning with rewinding.

The rewind point is the dense cell's checkpoint at the end of epoch 1 when it kept it (the trainer keeps the last
two), else it is recomputed by training the dense network of the same seed for one epoch (bit-exact on CPU, where
the trainer is deterministic; on GPU close, not necessarily bit-exact) and cached in the dense cell's folder
(``REWIND_FILE``, written atomically) for the next cells of that seed.

``pruning.json``'s seconds (the sweep's ``pruning_seconds``) time the thresholding of the trained weights only: the
dense training the references start from is the dense cell's, and recomputing the rewind point counts as training.
"""

from __future__ import annotations

import json
import logging
import pathlib
import shutil
import time
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
from chex import ArrayTree

from prospr_jax import (
  checkpointing,
  experiment,
  files,
  masks as masks_lib,
  pruned_network,
  pruning,
  trainer,
  training,
  validation,
  workdir as workdir_lib,
)

log = logging.getLogger(__name__)

MAGNITUDE_AFTER_TRAINING = 'magnitude_after_training'
LOTTERY_REWIND = 'lottery_rewind'
REFERENCES: tuple[str, ...] = (MAGNITUDE_AFTER_TRAINING, LOTTERY_REWIND)  # not in the registry: not at-init
REWIND_EPOCH = 1
REWIND_FILE = f'rewind_point_epoch_{REWIND_EPOCH}.msgpack'  # in the dense cell's folder
REWIND_SCRATCH = 'rewind_point'  # in the reference cell's folder: the one-epoch dense run, removed once cached
CHECKPOINTS = 'checkpoints'


class MissingDenseRun(FileNotFoundError):
  """The trained dense network a reference starts from is not there (yet); the message names its folder."""


def is_reference(criterion: str) -> bool:
  """Whether ``criterion`` names a prune-after-training reference (not an at-initialization criterion)."""
  return criterion in REFERENCES


def validate_config(config: ml_collections.ConfigDict) -> None:
  """``validation.validate_config`` for a reference's config, and what a reference needs of it."""
  if not is_reference(config.criterion):
    raise validation.ConfigError(f'config.criterion={config.criterion!r} is not a prune-after-training reference; '
                                 f'those are {", ".join(REFERENCES)}')
  at_init = config.copy_and_resolve_references()
  at_init.criterion = 'magnitude'  # the registry knows no reference; everything else is checked as for any cell
  validation.validate_config(at_init)
  name = config.criterion
  checks = [
      (not config.prune.structured, f'{name} prunes single weights: set config.prune.structured=False'),
      (config.distribution == 'global', f'{name} prunes by global magnitude: set config.distribution=global'),
      (config.ablation == 'none', f'{name} is a reference, not an at-init criterion: set config.ablation=none'),
      (config.num_epochs >= 1, f'{name} retrains the pruned network: config.num_epochs must be >= 1'),
      (name != LOTTERY_REWIND or config.num_epochs > REWIND_EPOCH,
       (f'{name} rewinds to the end of epoch {REWIND_EPOCH} and retrains the remaining epochs: '
        f'config.num_epochs must be >= {REWIND_EPOCH + 1}, got {config.num_epochs}')),
  ]
  for ok, message in checks:
    if not ok:
      raise validation.ConfigError(message)


def magnitude_scores(params: ArrayTree) -> ArrayTree:
  """``|w|`` on the prunable leaves (kernels, ``ndim > 1``: ``masks.ones_mask``), ``None`` elsewhere."""
  return jax.tree.map(lambda m, p: None if m is None else jnp.abs(p), masks_lib.ones_mask(params), params,
                      is_leaf=masks_lib.is_none)


def magnitude_mask(params: ArrayTree, sparsity: float, *, keep_one_per_layer: bool = False) -> ArrayTree:
  """One-shot global magnitude top-k: the ``ceil(N * (1 - sparsity))`` largest ``|w|`` over all prunable weights."""
  return masks_lib.global_topk_mask(magnitude_scores(params), sparsity, keep_one_per_layer=keep_one_per_layer)


def variables_of(setup: experiment.Setup, state: training.TrainState) -> ArrayTree:
  """``setup.variables`` with the params and the BatchNorm statistics of a ``TrainState``."""
  variables = {**setup.variables, 'params': state.params}
  if 'batch_stats' in setup.variables:
    variables['batch_stats'] = state.batch_stats
  return variables


def restore_variables(config: ml_collections.ConfigDict, setup: experiment.Setup, checkpoint_dir: pathlib.Path,
                      step: int, mask: ArrayTree | None = None) -> ArrayTree:
  """The variables in the trainer's checkpoint at ``step`` (of a run with ``mask``, default dense)."""
  if not (checkpoint_dir / str(step)).is_dir():
    raise MissingDenseRun(f'{checkpoint_dir} holds no checkpoint at step {step}')
  mask = masks_lib.all_ones_mask(setup.variables['params']) if mask is None else mask
  template = trainer.initial_state(config, setup, mask)
  checkpointer = checkpointing.Checkpointer(checkpoint_dir)
  try:
    state, _, _ = checkpointer.restore(template, template.params, step=step)
  finally:
    checkpointer.close()
  return variables_of(setup, state)


def check_dense_config(config: ml_collections.ConfigDict, dense_dir: pathlib.Path) -> None:
  """Refuse a dense run trained with another recipe than ``config`` (its criterion and sparsity aside)."""
  path = dense_dir / workdir_lib.CONFIG_FILE
  if not path.exists():
    raise MissingDenseRun(f'{dense_dir} holds no trained dense network ({path} is missing): train it first')
  ignored = workdir_lib.HOW_TO_RUN | {'criterion', 'prune.sparsity'}
  differing = [key for key in workdir_lib.differing_fields(json.loads(path.read_text()), config.to_dict())
               if key not in ignored]
  if differing:
    raise validation.ConfigError(f'{config.criterion} starts from the dense run in {dense_dir}, trained with another '
                                 f'config ({", ".join(differing)} differ): give the dense run of this config')


def trained_variables(config: ml_collections.ConfigDict, setup: experiment.Setup,
                      dense_dir: pathlib.Path) -> ArrayTree:
  """The dense run's variables at the end of its training: its checkpoint at ``num_epochs`` x steps per epoch."""
  steps_per_epoch, _ = trainer.recipe_steps(config, setup)
  try:
    return restore_variables(config, setup, dense_dir / CHECKPOINTS, config.num_epochs * steps_per_epoch)
  except MissingDenseRun as error:
    raise MissingDenseRun(f'the trained dense network is missing: {error} (the end of its {config.num_epochs} '
                          f'epochs); delete {dense_dir} and rerun the sweep to train it again') from None


def rewind_variables(config: ml_collections.ConfigDict, setup: experiment.Setup, dense_dir: pathlib.Path,
                     scratch: pathlib.Path) -> ArrayTree:
  """The dense run's variables at the end of epoch 1: cached, its checkpoint, or recomputed in ``scratch`` (cached)."""
  cache = dense_dir / REWIND_FILE
  if cache.exists():
    log.info('Rewind point: %s', cache)
    return files.read_msgpack(cache, jax.device_get(setup.variables), fix='delete it: the next cell recomputes it')
  steps_per_epoch, _ = trainer.recipe_steps(config, setup)
  step = REWIND_EPOCH * steps_per_epoch
  if (dense_dir / CHECKPOINTS / str(step)).is_dir():
    log.info('Rewind point: the dense checkpoint at step %d in %s', step, dense_dir)
    return restore_variables(config, setup, dense_dir / CHECKPOINTS, step)
  log.info('Rewind point: %s kept no checkpoint at step %d; training the dense network for %d epoch in %s',
           dense_dir, step, REWIND_EPOCH, scratch)
  short = config.copy_and_resolve_references()
  short.num_epochs = REWIND_EPOCH
  trainer.train(short, setup, masks_lib.all_ones_mask(setup.variables['params']), scratch,
                title=f'dense to epoch {REWIND_EPOCH}')
  variables = restore_variables(short, setup, scratch / CHECKPOINTS, step)
  if jax.process_index() == 0:
    files.write_bytes(cache, flax.serialization.to_bytes(jax.device_get(variables)))
    shutil.rmtree(scratch, ignore_errors=True)
  return variables


def starting_point(config: ml_collections.ConfigDict, setup: experiment.Setup, trained: ArrayTree,
                   dense_dir: pathlib.Path, scratch: pathlib.Path) -> tuple[ArrayTree, int]:
  """``(variables, step)`` retraining starts from: the trained ones at step 0, or the rewind point after epoch 1."""
  if config.criterion == MAGNITUDE_AFTER_TRAINING:
    return trained, 0
  steps_per_epoch, _ = trainer.recipe_steps(config, setup)
  return rewind_variables(config, setup, dense_dir, scratch), REWIND_EPOCH * steps_per_epoch


def prune_trained(config: ml_collections.ConfigDict, setup: experiment.Setup, trained: ArrayTree,
                  workdir: pathlib.Path) -> ArrayTree:
  """The cell's mask: its ``mask.npz`` if written, else the magnitude mask of ``trained``, written as pruning does."""
  path = workdir / 'mask.npz'
  if path.exists():  # written last by this step, under this same config (check_config)
    log.info('Using the mask already in %s', path)
    return masks_lib.load_masks(path, setup.variables['params'])
  start = time.perf_counter()
  params = jax.device_get(trained['params'])
  mask = jax.device_get(magnitude_mask(params, config.prune.sparsity,
                                       keep_one_per_layer=config.prune.keep_one_per_layer))
  seconds = time.perf_counter() - start
  report, weights = pruned_network.mask_reports(setup.model, params, mask, False)
  log.info('%s: pruned the trained weights to %.2f%% density in %.2f s:\n%s', config.criterion, 100 * report.density,
           seconds, report)
  if jax.process_index() == 0:
    pruning.write_mask_artifacts(workdir, mask, report, config, seconds, magnitude_scores(params), weights)
  return mask


def run_reference(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                  dense_dir: str | pathlib.Path) -> dict[str, Any]:
  """Prune the trained dense network in ``dense_dir`` once, retrain it per ``config.criterion``, report; resumable.

  Writes what ``experiment.prune_and_train`` writes (``mask.npz`` and the pruning files, ``pruned/`` with its
  checkpoints and metrics, ``results.json`` last); a rerun resumes from the newest checkpoint of ``pruned/``.
  """
  workdir, dense_dir = pathlib.Path(workdir), pathlib.Path(dense_dir)
  with experiment.claimed(config, workdir, validate=validate_config):
    check_dense_config(config, dense_dir)
    setup = experiment.make_setup(config)
    trained = trained_variables(config, setup, dense_dir)
    mask = prune_trained(config, setup, trained, workdir)
    variables, start_step = starting_point(config, setup, trained, dense_dir, workdir / REWIND_SCRATCH)
    results = experiment.mask_results(config, setup, mask)
    results['pruned'] = trainer.train(config, setup, mask, workdir / 'pruned', title=f'{config.criterion} pruned',
                                      variables=variables, start_step=start_step)
    if jax.process_index() == 0:
      files.write_json(workdir / 'results.json', results)
      print(experiment.format_results(config, results), flush=True)
    return results
