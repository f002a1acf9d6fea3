"""The references that prune AFTER training (the paper's Figure 2, from Frankle et al. 2021), run as sweep cells.

Each prunes the trained dense network of its config and seed (the sweep's dense cell, from its checkpoints) by
global magnitude ``|w|`` over the prunable weights (kernels, ``ndim > 1``; layer collapse as ``global_topk_mask``)
and retrains it with the mask as any cell (same recipe, fresh optimizer state; BatchNorm statistics from the same
point as the weights). ``magnitude_after_training`` (Renda et al. 2020), one shot: keep the ``ceil(N * (1 -
sparsity))`` largest ``|w|``, retrain from the trained weights with the whole recipe. ``lottery_rewind_one_shot``
(Frankle et al. 2020), one shot: the same mask, the kept weights rewound to the dense run's end of epoch 1 and
retrained for the remaining ``num_epochs - 1`` epochs, schedule and data order going on from there (its former name
``lottery_rewind`` still runs it, with a FutureWarning). ``lottery_rewind_iterative``, the paper's "LTR after
training" (``iterative_rewinding``): rounds of 20% of the remaining weights, each rewound and retrained so.

The rewind point is the dense cell's checkpoint at the end of epoch 1 when it kept it (the trainer keeps the last
two), else the dense network trained again for one epoch (bit-exact on CPU; on GPU close), cached in the dense
cell's folder (``REWIND_FILE``). ``pruning.json``'s seconds time the thresholding of the trained weights only.
"""

from __future__ import annotations

import functools
import json
import logging
import pathlib
import shutil
import time
import warnings
from collections.abc import Callable
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
from chex import ArrayTree

from prospr_jax import files, mask_files, masks as masks_lib, topk
from prospr_jax.harness import connectivity, experiment, pruning, reports, train_loop, train_steps, validation
from prospr_jax.harness.records import PruneSpec, Recipe, Running
from prospr_jax.harness.setup import Setup, make_setup
from prospr_jax.runtime import checkpointing, workdir as workdir_lib

log = logging.getLogger(__name__)

MAGNITUDE_AFTER_TRAINING = 'magnitude_after_training'
LOTTERY_REWIND_ONE_SHOT = 'lottery_rewind_one_shot'
LOTTERY_REWIND_ITERATIVE = 'lottery_rewind_iterative'
REFERENCES: tuple[str, ...] = (MAGNITUDE_AFTER_TRAINING, LOTTERY_REWIND_ONE_SHOT, LOTTERY_REWIND_ITERATIVE)
LOTTERY_REWIND = 'lottery_rewind'  # the one-shot reference's former name: still runs it, with a FutureWarning
DEPRECATED: dict[str, str] = {LOTTERY_REWIND: LOTTERY_REWIND_ONE_SHOT}
DESCRIPTIONS: dict[str, str] = {  # how each prunes the trained dense network, as the tables say it
    MAGNITUDE_AFTER_TRAINING: 'one shot, retrained from the trained weights',
    LOTTERY_REWIND_ONE_SHOT: 'one shot, rewound to epoch 1', LOTTERY_REWIND: 'one shot, rewound to epoch 1',
    LOTTERY_REWIND_ITERATIVE: ('iterative, 20% of the remaining weights per round, each rewound to epoch 1 and '
                               'retrained; a sparsity off 1 - 0.8^k ends with one shorter round')}
REWIND_EPOCH = 1
REWIND_FILE = f'rewind_point_epoch_{REWIND_EPOCH}.msgpack'  # in the dense cell's folder
REWIND_SCRATCH = 'rewind_point'  # in the reference cell's folder: the one-epoch dense run, removed once cached
CHECKPOINTS = 'checkpoints'


class MissingDenseRun(FileNotFoundError):
  """The trained dense network a reference starts from is not there (yet); the message names its folder."""


def is_reference(criterion: str) -> bool:
  """Whether ``criterion`` names a prune-after-training reference (not an at-initialization criterion)."""
  return criterion in REFERENCES or criterion in DEPRECATED


def is_iterative(criterion: str) -> bool:
  """Whether ``criterion`` prunes in rounds, each the cell of its sparsity, each needing the round before it."""
  return criterion == LOTTERY_REWIND_ITERATIVE


def validate_config(config: ml_collections.ConfigDict) -> None:
  """``validation.validate_config`` for a reference's config, and what a reference needs of it."""
  if not is_reference(config.criterion):
    raise validation.ConfigError(f'config.criterion={config.criterion!r} is not a prune-after-training reference; '
                                 f'those are {", ".join(REFERENCES)}')
  if config.criterion in DEPRECATED:  # a FutureWarning: users see it
    warnings.warn(f'{config.criterion} is deprecated: it is the one-shot reference, now '
                  f"{DEPRECATED[config.criterion]}; the paper's iterative LTR is {LOTTERY_REWIND_ITERATIVE}",
                  FutureWarning, stacklevel=2)
  validation.validate_config(config, criteria=(*REFERENCES, *DEPRECATED))  # everything else is checked as for any cell
  name = config.criterion
  checks = [
      (not config.prune.structured, f'{name} prunes single weights: set config.prune.structured=False'),
      (config.distribution == 'global', f'{name} prunes by global magnitude: set config.distribution=global'),
      (config.ablation == 'none', f'{name} is a reference, not an at-init criterion: set config.ablation=none'),
      (config.num_epochs >= 1, f'{name} retrains the pruned network: config.num_epochs must be >= 1'),
      (name == MAGNITUDE_AFTER_TRAINING or config.num_epochs > REWIND_EPOCH,
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
  return topk.global_topk_mask(magnitude_scores(params), sparsity, keep_one_per_layer=keep_one_per_layer)


def variables_of(setup: Setup, state: train_steps.TrainState) -> ArrayTree:
  """``setup.variables`` with the params and the BatchNorm statistics of a ``TrainState``."""
  variables = {**setup.variables, 'params': state.params}
  if 'batch_stats' in setup.variables:
    variables['batch_stats'] = state.batch_stats
  return variables


def restore_variables(config: ml_collections.ConfigDict, setup: Setup, checkpoint_dir: pathlib.Path,
                      step: int, mask: ArrayTree | None = None) -> ArrayTree:
  """The variables in the trainer's checkpoint at ``step`` (of a run with ``mask``, default dense)."""
  if not (checkpoint_dir / str(step)).is_dir():
    raise MissingDenseRun(f'{checkpoint_dir} holds no checkpoint at step {step}')
  mask = masks_lib.all_ones_mask(setup.variables['params']) if mask is None else mask
  template = train_loop.initial_state(Recipe.of(config), config.seed, setup, mask)
  checkpointer = checkpointing.Checkpointer(checkpoint_dir)
  try:
    state, _, _ = checkpointer.restore(template, template.params, step=step)
  finally:
    checkpointer.close()
  return variables_of(setup, state)


def check_dense_config(config: ml_collections.ConfigDict, dense_dir: pathlib.Path) -> None:
  """Refuse a dense run trained with another recipe than ``config`` (its criterion and sparsity aside); one that
  diverged left no trained network: ``TrainingDiverged``, which a sweep records as the reference's outcome too."""
  if (done := dense_dir / 'results.json').exists() and (diverged := json.loads(done.read_text()).get('diverged')):
    raise train_loop.TrainingDiverged(f'the dense network it prunes ({dense_dir}) diverged: {diverged}')
  path = dense_dir / workdir_lib.CONFIG_FILE
  if not path.exists():
    raise MissingDenseRun(f'{dense_dir} holds no trained dense network ({path} is missing): train it first')
  ignored = workdir_lib.HOW_TO_RUN | {'criterion', 'prune.sparsity'}
  differing = [key for key in workdir_lib.differing_fields(json.loads(path.read_text()), config.to_dict())
               if key not in ignored]
  if differing:
    raise validation.ConfigError(f'{config.criterion} starts from the dense run in {dense_dir}, trained with another '
                                 f'config ({", ".join(differing)} differ): give the dense run of this config')


def trained_variables(config: ml_collections.ConfigDict, setup: Setup,
                      dense_dir: pathlib.Path) -> ArrayTree:
  """The dense run's variables at the end of its training: its checkpoint at ``num_epochs`` x steps per epoch."""
  steps_per_epoch, _ = train_loop.recipe_steps(Recipe.of(config), setup)
  try:
    return restore_variables(config, setup, dense_dir / CHECKPOINTS, config.num_epochs * steps_per_epoch)
  except MissingDenseRun as error:
    raise MissingDenseRun(f'the trained dense network is missing: {error} (the end of its {config.num_epochs} '
                          f'epochs); delete {dense_dir} and rerun the sweep to train it again') from None


def rewind_variables(config: ml_collections.ConfigDict, setup: Setup, dense_dir: pathlib.Path,
                     scratch: pathlib.Path) -> ArrayTree:
  """The dense run's variables at the end of epoch 1: cached, its checkpoint, or recomputed in ``scratch`` (cached)."""
  cache = dense_dir / REWIND_FILE
  if cache.exists():
    log.info('Rewind point: %s', cache)
    return files.read_msgpack(cache, jax.device_get(setup.variables), fix='delete it: the next cell recomputes it')
  steps_per_epoch, _ = train_loop.recipe_steps(Recipe.of(config), setup)
  step = REWIND_EPOCH * steps_per_epoch
  if (dense_dir / CHECKPOINTS / str(step)).is_dir():
    log.info('Rewind point: the dense checkpoint at step %d in %s', step, dense_dir)
    return restore_variables(config, setup, dense_dir / CHECKPOINTS, step)
  log.info('Rewind point: %s kept no checkpoint at step %d; training the dense network for %d epoch in %s',
           dense_dir, step, REWIND_EPOCH, scratch)
  short = config.copy_and_resolve_references()
  short.num_epochs = REWIND_EPOCH
  train_loop.train(Recipe.of(short), Running.of(short), setup, masks_lib.all_ones_mask(setup.variables['params']),
                   scratch, title=f'dense to epoch {REWIND_EPOCH}')
  variables = restore_variables(short, setup, scratch / CHECKPOINTS, step)
  if jax.process_index() == 0:
    files.write_bytes(cache, flax.serialization.to_bytes(jax.device_get(variables)))
    shutil.rmtree(scratch, ignore_errors=True)
  return variables


def starting_point(config: ml_collections.ConfigDict, setup: Setup, trained: ArrayTree,
                   dense_dir: pathlib.Path, scratch: pathlib.Path) -> tuple[ArrayTree, int]:
  """``(variables, step)`` retraining starts from: the trained ones at step 0, or the rewind point after epoch 1."""
  if config.criterion == MAGNITUDE_AFTER_TRAINING:
    return trained, 0
  steps_per_epoch, _ = train_loop.recipe_steps(Recipe.of(config), setup)
  return rewind_variables(config, setup, dense_dir, scratch), REWIND_EPOCH * steps_per_epoch


MaskOf = Callable[[ArrayTree], ArrayTree]  # trained params -> the cell's mask


def prune_trained(config: ml_collections.ConfigDict, setup: Setup, trained: ArrayTree, mask_of: MaskOf,
                  workdir: pathlib.Path) -> ArrayTree:
  """The cell's mask: its ``mask.npz`` if written, else ``mask_of`` the trained params, written as pruning does."""
  path = workdir / 'mask.npz'
  if path.exists():  # written last by this step, under this same config (check_config)
    log.info('Using the mask already in %s', path)
    return mask_files.load_masks(path, setup.variables['params'])
  start = time.perf_counter()
  params = jax.device_get(trained['params'])
  try:
    mask = jax.device_get(mask_of(params))
  except topk.LayerCollapseError as error:  # as for a criterion's mask: trained if shortcuts bypass the emptied layers
    mask = jax.device_get(connectivity.mask_or_collapse(error, setup.model, trained, setup.info.input_shape))
  seconds = time.perf_counter() - start
  report, weights = reports.mask_reports(setup.model, params, mask, False)
  log.info('%s: pruned the trained weights to %.2f%% density in %.2f s:\n%s', config.criterion, 100 * report.density,
           seconds, report)
  if jax.process_index() == 0:
    pruning.write_mask_artifacts(workdir, mask, report, PruneSpec.of(config), Running.of(config).label, seconds,
                                 magnitude_scores(params), weights)
  return mask


def run_reference(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, dense_dir: str | pathlib.Path,
                  pruned_from: Callable[[Setup], tuple[ArrayTree, MaskOf]] | None = None) -> dict[str, Any]:
  """Prune a trained network, retrain it per ``config.criterion``, report; resumable (from ``pruned/``'s checkpoints).

  ``pruned_from(setup)``: the trained variables and how to mask them (default: the dense network in ``dense_dir``,
  one-shot magnitude). Writes ``experiment.prune_and_train``'s files, ``results.json`` last."""
  workdir, dense_dir = pathlib.Path(workdir), pathlib.Path(dense_dir)
  if is_iterative(config.criterion) and pruned_from is None:
    raise ValueError(f'{config.criterion} prunes in rounds: run it with iterative_rewinding.run_round')
  with experiment.claimed(config, workdir, validate=validate_config):
    check_dense_config(config, dense_dir)
    setup = make_setup(config)
    trained, mask_of = (pruned_from or functools.partial(_one_shot, config, dense_dir))(setup)
    mask = prune_trained(config, setup, trained, mask_of, workdir)
    variables, start_step = starting_point(config, setup, trained, dense_dir, workdir / REWIND_SCRATCH)
    results = reports.mask_results(PruneSpec.of(config), setup, mask)
    results['pruned'] = train_loop.train(Recipe.of(config), Running.of(config), setup, mask, workdir / 'pruned',
                                         title=f'{config.criterion} pruned', variables=variables,
                                         start_step=start_step)
    if jax.process_index() == 0:
      files.write_json(workdir / 'results.json', results)
      print(reports.format_results(PruneSpec.of(config), Running.of(config).label, config.num_epochs, results), flush=True)
    return results


def _one_shot(config: ml_collections.ConfigDict, dense_dir: pathlib.Path,
              setup: Setup) -> tuple[ArrayTree, MaskOf]:
  return trained_variables(config, setup, dense_dir), functools.partial(
      magnitude_mask, sparsity=config.prune.sparsity, keep_one_per_layer=config.prune.keep_one_per_layer)
