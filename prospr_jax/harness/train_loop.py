"""The training loop of an experiment: resume, epochs, evaluation, checkpoints, metrics, and a stop on divergence.

A rerun with the same workdir resumes from the newest checkpoint that restores,
data order included, and reports a resumed epoch's train loss and accuracy over
the whole epoch, as an uninterrupted run does. A non-finite loss stops the run
at once with a message naming the step; the last good checkpoint stays, none is
written after it.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from chex import ArrayTree
from tqdm.contrib.logging import logging_redirect_tqdm

from prospr_jax import data
from prospr_jax.harness import dispatch, plots, seeds, train_steps
from prospr_jax.harness.epoch_sums import EpochSums
from prospr_jax.harness.records import PruneSpec, Recipe, Running
from prospr_jax.harness.setup import Setup
from prospr_jax.models import compaction
from prospr_jax.runtime import checkpointing, faults, preemption, sharding
from prospr_jax.runtime.metrics import MetricsWriter

log = logging.getLogger(__name__)


class TrainingDiverged(ValueError):
  """The training loss became NaN or infinite; the message names the step and the likely cause."""


@jax.jit
def _all_finite(tree: ArrayTree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def check_finite(loss: jax.Array, step: int, steps_per_epoch: int, learning_rate: float,
                 last_checkpoint: int | None, params: ArrayTree | None = None) -> None:
  """Raise ``TrainingDiverged`` unless the loss of ``step`` (1-based; a vector: the losses of the steps up to
  ``step``), and ``params`` if given, are finite."""
  values = np.atleast_1d(sharding.host_value(loss))
  bad = np.flatnonzero(~np.isfinite(values))
  if not bad.size and (params is None or bool(sharding.host_value(_all_finite(params)))):
    return
  value = float(values[bad[0]] if bad.size else values[-1])
  step -= len(values) - 1 - (bad[0] if bad.size else len(values) - 1)
  what = f'the loss became {value}' if not math.isfinite(value) else 'the parameters became NaN or infinite'
  kept = f'the checkpoint at step {last_checkpoint} is kept' if last_checkpoint else 'no checkpoint was written'
  raise TrainingDiverged(
      f'training diverged: {what} at step {step} (epoch {(step - 1) // steps_per_epoch + 1}). '
      f'The learning rate is the likely cause (config.learning_rate={learning_rate}): lower it and rerun '
      f'in a new --workdir (or with --start_over); {kept}.')


def _next_multiple(step: int, every: int) -> int:
  """The first multiple of ``every`` after ``step`` (none when ``every`` is 0)."""
  return (step // every + 1) * every if every else math.inf


@functools.lru_cache(maxsize=16)
def compiled_steps(model: nn.Module, learning_rate: float, momentum: float, weight_decay: float,
                   steps_per_epoch: int, milestones: tuple[int, ...], lr_decay: float):
  """``(schedule, optimizer, train_step, eval_step)``, jitted once per model and recipe in a process.

  Flax modules hash by value, so the cells of a sweep reuse the compiled steps. No buffer donation: orbax's
  async save may still be reading the previous state.
  """
  schedule = train_steps.lr_schedule(learning_rate, steps_per_epoch, milestones, lr_decay)
  optimizer = train_steps.make_optimizer(learning_rate=schedule, momentum=momentum, weight_decay=weight_decay)
  return (schedule, optimizer, jax.jit(functools.partial(train_steps.train_step, model=model, optimizer=optimizer)),
          jax.jit(functools.partial(train_steps.eval_step, model=model)))


def network_title(pruning: PruneSpec, network: str) -> str:
  """What a run trains, for its log lines and plot titles: ``pruned network (snip at 90.0% weight sparsity)``,
  ``compact network (snip at 50.0% channel sparsity)``, ``dense network``."""
  if network == 'dense':
    return 'dense network'
  return (f'{network} network ({pruning.criterion} at {pruning.sparsity:.1%} {pruning.target.rstrip("s")} '
          'sparsity)')


def recipe_steps(recipe: Recipe, setup: Setup):
  """``(steps_per_epoch, (schedule, optimizer, train_step, eval_step))`` of ``recipe`` on ``setup``."""
  steps_per_epoch = data.steps_per_epoch(len(setup.train_source), recipe.batch_size)
  return steps_per_epoch, compiled_steps(setup.model, recipe.learning_rate, recipe.momentum, recipe.weight_decay,
                                         steps_per_epoch, recipe.lr_milestones, recipe.lr_decay)


def initial_state(recipe: Recipe, seed: int, setup: Setup, mask: ArrayTree,
                  variables: ArrayTree | None = None, start_step: int = 0) -> train_steps.TrainState:
  """The replicated state training starts from (before any checkpoint): ``variables * mask`` at ``start_step``."""
  _, (_, optimizer, _, _) = recipe_steps(recipe, setup)
  variables = setup.variables if variables is None else variables
  state = train_steps.create_train_state(variables, mask, optimizer, seeds.train_dropout(seed))
  return sharding.replicate(train_steps.start_at(state, start_step) if start_step else state, setup.mesh)


def train(recipe: Recipe, running: Running, setup: Setup, mask: ArrayTree, workdir: pathlib.Path,
          title: str = '', variables: ArrayTree | None = None, start_step: int = 0) -> dict[str, float]:
  """Train ``variables * mask`` (default: ``setup.variables``) to ``recipe.num_epochs``, resuming from ``workdir``.

  ``title`` names the network in every epoch's log line and the learning curves (``network_title``).

  ``start_step`` (when ``workdir`` holds no checkpoint yet): begin there, as if resuming, with a fresh optimizer
  state: the data order and the learning-rate schedule go on from that step (lottery ticket rewinding). A
  mid-epoch checkpoint holds the epoch's per-step train loss and accuracy so far, so a resumed epoch reports the
  whole epoch. SIGTERM (``preemption``) saves a checkpoint of the step reached, then raises ``Preempted``.
  """
  variables = setup.variables if variables is None else variables
  workdir.mkdir(parents=True, exist_ok=True)
  steps_per_epoch, compiled = recipe_steps(recipe, setup)
  schedule = compiled[0]
  total_steps = recipe.num_epochs * steps_per_epoch
  state = initial_state(recipe, running.seed, setup, mask, variables, start_step)
  initial_params = sharding.replicate(variables['params'], setup.mesh)
  checkpointer = checkpointing.Checkpointer(workdir / 'checkpoints')
  metrics = MetricsWriter(workdir)
  step, last_checkpoint, epoch = start_step, None, EpochSums.empty()
  if checkpointer.latest_step() is not None:
    state, _, meta = checkpointer.restore(state, initial_params)
    step = last_checkpoint = int(sharding.host_value(state.step))
    epoch = EpochSums.from_meta(meta)
    log.info('Resumed from the checkpoint at step %d (epoch %d) in %s', step, meta['epoch'], workdir)
  metrics.truncate_after(step)  # rows past the checkpoint (all of them when there is none) are redone
  feed = dispatch.make(recipe, running, setup, steps_per_epoch, compiled, step)  # the data continue at ``step``

  every = running.checkpoint_every_steps
  check = functools.partial(check_finite, steps_per_epoch=steps_per_epoch, learning_rate=recipe.learning_rate)
  progress = tqdm.tqdm(total=total_steps, initial=step, unit='step',
                       disable=None if jax.process_index() == 0 else True,  # None: only on a terminal
                       desc=title or 'train', dynamic_ncols=True, mininterval=2.0)

  def save(step: int, meta: dict) -> None:
    nonlocal last_checkpoint
    check(step_metrics['loss'], step, last_checkpoint=last_checkpoint, params=state.params)  # never save NaN
    checkpointer.save(step, state, initial_params, meta)
    last_checkpoint = step

  try:
    with logging_redirect_tqdm([logging.getLogger('prospr_jax')]), preemption.held():
      while step < total_steps:
        stop = min(total_steps, (step // steps_per_epoch + 1) * steps_per_epoch, _next_multiple(step, every))
        state, step_metrics, ran = feed.advance(state, step, stop)
        step += ran
        if epoch.loss:  # the previous dispatch's losses, computed by now: no wait on the one just dispatched
          check(epoch.loss[-1], step - ran, last_checkpoint=last_checkpoint)
        epoch.add(step_metrics)
        progress.update(ran)
        for reached in range(step - ran + 1, step + 1):
          faults.point('training', reached)
        if step % steps_per_epoch == 0:
          trained = epoch.means()  # waits for the epoch's last steps: the rate below counts training, not evaluation
          images_per_second = epoch.steps() * recipe.batch_size / epoch.seconds()
          row = {'epoch': step // steps_per_epoch, 'step': step, 'learning_rate': float(schedule(step - 1)),
                 **trained, **feed.evaluate(state), 'images_per_second': images_per_second}
          metrics.write(row)  # on disk (TensorBoard too) before its checkpoint commits
          progress.set_postfix(loss=f'{row["train_loss"]:.3f}', top1=f'{row["eval_top1"]:.2%}',
                               img_s=f'{row["images_per_second"]:.0f}')
          log.info('epoch %d, %s: %s', row['epoch'], title or 'training',  # which network: pruned, compact, dense
                   json.dumps({k: round(v, 4) for k, v in row.items()}))
          save(step, {'epoch': row['epoch']})
          faults.point('checkpoint_save', step)
          epoch = EpochSums.empty()
        elif preemption.requested() or (every and step % every == 0):
          save(step, {'epoch': step // steps_per_epoch, **epoch.to_meta()})
        if preemption.requested():
          raise preemption.Preempted(f'SIGTERM: saved a checkpoint at step {step}')
  finally:  # a stop mid-run still finishes the save in flight: the newest checkpoint is whole
    progress.close()
    checkpointer.wait()
    checkpointer.close()
    metrics.close()
  rows = metrics.rows()
  if jax.process_index() == 0 and rows:
    plots.plot_learning_curves(rows, workdir / 'learning_curves.png',
                               title=f'{running.label}: {title or "training"}')
  return rows[-1] if rows else feed.evaluate(state)


def export_trained(recipe: Recipe, seed: int, compact_setup: Setup, mask: ArrayTree, train_dir: pathlib.Path,
                   workdir: pathlib.Path) -> None:
  """Write the compact network's trained variables (newest checkpoint in ``train_dir``) next to ``compact.json``."""
  checkpointer = checkpointing.Checkpointer(train_dir / 'checkpoints')
  try:
    initial = sharding.replicate(compact_setup.variables['params'], compact_setup.mesh)
    state, _, _ = checkpointer.restore(initial_state(recipe, seed, compact_setup, mask), initial)
  finally:
    checkpointer.close()
  trained = {**compact_setup.variables, 'params': state.params}
  if 'batch_stats' in trained:
    trained['batch_stats'] = state.batch_stats
  trained = sharding.host_value(trained)
  if jax.process_index() == 0:
    compaction.save_trained(workdir, trained)
