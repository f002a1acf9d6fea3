"""What a network costs: parameters, FLOPs per example, train-step time and memory, inference latency.

FLOPs and memory are XLA's own counts for the compiled program
(``jax.jit(f).lower(...).compile().cost_analysis()`` and ``memory_analysis()``);
times are the median of a few calls after a warm-up call, on synthetic data.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from chex import ArrayTree

from prospr_jax import masks as masks_lib, training


def parameter_count(params: ArrayTree, mask: ArrayTree | None = None) -> int:
  """Parameters, or with ``mask`` (mirroring params) the ones it keeps."""
  if mask is None:
    return sum(int(np.size(p)) for p in jax.tree.leaves(params))
  kept = jax.tree.map(lambda m, p: np.size(p) if m is None else int(np.count_nonzero(np.asarray(m)) * np.size(p)
                                                                       // np.size(m)), mask, params, is_leaf=masks_lib.is_none)
  return sum(jax.tree.leaves(kept))


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
  jax.block_until_ready(fn())  # compile and warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _images(batch_size: int, input_shape: tuple[int, ...]) -> jax.Array:
  return jax.random.normal(jax.random.key(0), (batch_size, *input_shape), jnp.float32)


def forward_flops(model: nn.Module, variables: ArrayTree, input_shape: tuple[int, ...]) -> float:
  """FLOPs of one example's eval-mode forward pass, by XLA's cost analysis."""
  compiled = jax.jit(functools.partial(model.apply, train=False)).lower(variables, _images(1, input_shape)).compile()
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis['flops'])


def latency(model: nn.Module, variables: ArrayTree, input_shape: tuple[int, ...], batch_size: int,
            repeats: int = 5) -> float:
  """Seconds of one eval-mode forward pass over ``batch_size`` images."""
  apply = jax.jit(functools.partial(model.apply, train=False))
  images = _images(batch_size, input_shape)
  return _median_seconds(lambda: apply(variables, images), repeats)


def train_step(model: nn.Module, variables: ArrayTree, mask: ArrayTree, input_shape: tuple[int, ...],
               num_classes: int, batch_size: int, repeats: int = 3) -> dict[str, float]:
  """A masked SGD train step (momentum, weight decay): median seconds, images/s and XLA's peak bytes."""
  optimizer = training.make_optimizer(learning_rate=0.01, momentum=0.9, weight_decay=5e-4)
  state = training.create_train_state(variables, mask, optimizer, jax.random.key(0))
  batch = {'image': _images(batch_size, input_shape),
           'label': jnp.arange(batch_size, dtype=jnp.int32) % num_classes}
  step = jax.jit(functools.partial(training.train_step, model=model, optimizer=optimizer))
  compiled = step.lower(state, batch).compile()
  seconds = _median_seconds(lambda: compiled(state, batch)[1]['loss'], repeats)
  memory = compiled.memory_analysis()
  peak = getattr(memory, 'peak_memory_in_bytes', 0) or (memory.temp_size_in_bytes + memory.argument_size_in_bytes
                                                         + memory.output_size_in_bytes)
  return {'train_step_seconds': seconds, 'images_per_second': batch_size / seconds, 'peak_bytes': float(peak)}


def network_cost(model: nn.Module, variables: ArrayTree, mask: ArrayTree, *, input_shape: tuple[int, ...],
                 num_classes: int, batch_size: int, eval_batch_size: int) -> dict[str, float]:
  """Parameters (kept), FLOPs per example, train step at ``batch_size``, latency at batch 1 and ``eval_batch_size``."""
  return {'parameters': parameter_count(variables['params'], mask),
          'flops_per_example': forward_flops(model, variables, input_shape),  # XLA counts zeros too
          **train_step(model, variables, mask, input_shape, num_classes, batch_size),
          'latency_batch_1_seconds': latency(model, variables, input_shape, 1),
          f'latency_batch_{eval_batch_size}_seconds': latency(model, variables, input_shape, eval_batch_size)}


def comparison_table(costs: dict[str, dict[str, float]]) -> str:
  """Rows of ``{network: cost}`` side by side, with the ratio of the last to the first."""
  names = list(costs)
  keys = list(costs[names[0]])
  lines = [f'{"":<28}' + ''.join(f'{n:>14}' for n in names) + f'{"ratio":>10}']
  for key in keys:
    values = [costs[n][key] for n in names]
    shown = ''.join(f'{v:>14.4g}' for v in values)
    ratio = values[-1] / values[0] if values[0] else float('nan')
    lines.append(f'{key:<28}{shown}{ratio:>10.3f}')
  return '\n'.join(lines)
