"""How the training loop reaches the device: one host batch per dispatch, or chunks of steps on a resident set.

The host mode (the default) feeds one batch from the grain pipeline per train step. With
``config.data_on_device`` an in-memory set is held on the device and shuffled, augmented and batched there
(``data.resident``); ``config.steps_per_dispatch`` steps then run as one program (a scan), and the evaluation set
is evaluated in one program too. Either way ``advance(state, step, stop)`` runs at most up to step ``stop`` and
returns ``(state, metrics, steps_run)``; ``metrics`` holds one loss and accuracy per step run (a leading axis when
the mode runs chunks).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh

from prospr_jax import data
from prospr_jax.data import resident
from prospr_jax.harness import seeds, train_steps
from prospr_jax.harness.records import Recipe, Running
from prospr_jax.harness.setup import Setup
from prospr_jax.runtime import sharding


@dataclasses.dataclass(frozen=True)
class Dispatch:
  advance: Callable[[train_steps.TrainState, int, int], tuple[train_steps.TrainState, dict, int]]
  evaluate: Callable[[train_steps.TrainState], dict[str, float]]


def evaluate(state: train_steps.TrainState, setup: Setup, eval_fn, batch_size: int) -> dict[str, float]:
  """Loss, top-1 and top-5 over the evaluation set, fed from the host one batch at a time."""
  sums = [sharding.host_value(eval_fn(state, sharding.global_batch(batch, setup.mesh)))
          for batch in data.eval_batches(setup.info, setup.eval_source, global_batch_size=batch_size)]
  return train_steps.summarize_eval(sums)


def make(recipe: Recipe, running: Running, setup: Setup, steps_per_epoch: int, compiled: tuple,
         start_step: int) -> Dispatch:
  """The dispatch of ``running``'s mode, its data continuing at ``start_step``; ``compiled`` as from
  ``train_loop.compiled_steps``."""
  _, optimizer, train_step, eval_step = compiled
  if running.data_on_device:
    return _resident(recipe, running, setup, steps_per_epoch, optimizer)
  loader = data.train_loader(setup.info, setup.train_source, global_batch_size=recipe.batch_size,
                             seed=seeds.train_data(running.seed), start_step=start_step,
                             worker_count=running.worker_count)
  batches = iter(loader)

  def advance(state, step, stop):
    del step, stop
    state, metrics = train_step(state, sharding.global_batch(next(batches), setup.mesh))
    return state, metrics, 1

  return Dispatch(advance, lambda state: evaluate(state, setup, eval_step, recipe.eval_batch_size))


@functools.lru_cache(maxsize=16)
def compiled_resident(model: nn.Module, optimizer: optax.GradientTransformation, train_spec: resident.Layout,
                      eval_spec: resident.Layout, mesh: Mesh):
  """``(epoch_order, train_chunk, eval_resident)`` jitted once per model, recipe and set in a process (a chunk's
  length is static: each length compiles once)."""
  batch_sharding = sharding.data_sharded(mesh)
  chunk = jax.jit(functools.partial(train_steps.train_chunk, spec=train_spec, batch_sharding=batch_sharding,
                                    model=model, optimizer=optimizer), static_argnames=('length',))
  evaluation = jax.jit(functools.partial(train_steps.eval_resident, spec=eval_spec, batch_sharding=batch_sharding,
                                         model=model))
  return jax.jit(functools.partial(resident.epoch_order, spec=train_spec)), chunk, evaluation


def _resident(recipe: Recipe, running: Running, setup: Setup, steps_per_epoch: int,
              optimizer: optax.GradientTransformation) -> Dispatch:
  train_spec = resident.layout(setup.info, setup.train_source, recipe.batch_size, steps_per_epoch, train=True)
  eval_spec = resident.layout(setup.info, setup.eval_source, recipe.eval_batch_size, 0, train=False)
  epoch_order, chunk, evaluation = compiled_resident(setup.model, optimizer, train_spec, eval_spec, setup.mesh)
  arrays, eval_arrays = resident.put(setup.train_source, setup.mesh), resident.put(setup.eval_source, setup.mesh)
  key = sharding.replicate(seeds.device_data(running.seed), setup.mesh)

  orders = {}  # the current epoch's record order, drawn once per epoch

  def advance(state, step, stop):
    # K steps at a time, a shorter remainder (before an epoch's end or a checkpoint) one step at a time: two compiled
    # programs, K and 1, whatever the alignment (a chunk of each remainder's length would compile one program each)
    length = running.steps_per_dispatch if stop - step >= running.steps_per_dispatch else 1
    epoch = step // steps_per_epoch
    if epoch not in orders:
      orders.clear()
      orders[epoch] = epoch_order(key, np.int32(epoch))
    state, metrics = chunk(state, arrays, orders[epoch], key, np.int32(step), length=length)
    return state, metrics, length

  return Dispatch(advance, lambda state: train_steps.summarize_eval(
      [sharding.host_value(evaluation(state, eval_arrays))]))
