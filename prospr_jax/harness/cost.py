"""What a network costs: parameters, FLOPs per example, train-step time and memory, inference latency.

FLOPs are counted from shapes (``models.flops``: the same under every
convolution implementation and backend); XLA's own count of the compiled
program stays beside them, labelled with its backend. Times of several networks
are measured interleaved (one call of each per repeat, after a warm-up call),
so load on the machine falls on all of them alike; each is reported as the
median with its range, and a ratio whose ranges overlap is called not measurable.
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

from prospr_jax import masks as masks_lib
from prospr_jax.harness import train_steps
from prospr_jax.models import flops

TIMED = ('train_step_seconds', 'latency_batch_1_seconds')  # plus latency at the eval batch size
COST_FILE = 'compaction.json'  # the dense and the compact network side by side (a compacted run)


def parameter_count(params: ArrayTree, mask: ArrayTree | None = None) -> int:
  """Parameters, or with ``mask`` (mirroring params) the ones it keeps."""
  if mask is None:
    return sum(int(np.size(p)) for p in jax.tree.leaves(params))
  kept = jax.tree.map(lambda m, p: np.size(p) if m is None else int(np.count_nonzero(np.asarray(m)) * np.size(p)
                                                                       // np.size(m)), mask, params, is_leaf=masks_lib.is_none)
  return sum(jax.tree.leaves(kept))


def _images(batch_size: int, input_shape: tuple[int, ...]) -> jax.Array:
  return jax.random.normal(jax.random.key(0), (batch_size, *input_shape), jnp.float32)


def xla_flops(model: nn.Module, variables: ArrayTree, input_shape: tuple[int, ...]) -> float:
  """FLOPs of one example's eval-mode forward pass by XLA's cost analysis of what it compiled for this backend
  (it counts zeros, the convolution implementation's own operations, and nothing for GPU library calls)."""
  compiled = jax.jit(functools.partial(model.apply, train=False)).lower(variables, _images(1, input_shape)).compile()
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis['flops'])


def _programs(model: nn.Module, variables: ArrayTree, mask: ArrayTree, input_shape: tuple[int, ...],
              num_classes: int, batch_size: int, eval_batch_size: int) -> tuple[dict[str, Callable[[], Any]], float]:
  """The timed calls of one network (compiled, warmed up) and the train step's peak bytes by XLA."""
  optimizer = train_steps.make_optimizer(learning_rate=0.01, momentum=0.9, weight_decay=5e-4)
  state = train_steps.create_train_state(variables, mask, optimizer, jax.random.key(0))
  batch = {'image': _images(batch_size, input_shape),
           'label': jnp.arange(batch_size, dtype=jnp.int32) % num_classes}
  step = jax.jit(functools.partial(train_steps.train_step, model=model, optimizer=optimizer)).lower(state, batch).compile()
  memory = step.memory_analysis()
  peak = getattr(memory, 'peak_memory_in_bytes', 0) or (memory.temp_size_in_bytes + memory.argument_size_in_bytes
                                                         + memory.output_size_in_bytes)
  apply = jax.jit(functools.partial(model.apply, train=False))
  images = {size: _images(size, input_shape) for size in (1, eval_batch_size)}
  calls = {'train_step_seconds': lambda: step(state, batch)[1]['loss'],
           'latency_batch_1_seconds': lambda: apply(variables, images[1]),
           f'latency_batch_{eval_batch_size}_seconds': lambda: apply(variables, images[eval_batch_size])}
  for call in calls.values():
    jax.block_until_ready(call())  # compile and warm up
  return calls, float(peak)


def _interleaved_seconds(calls: dict[str, dict[str, Callable[[], Any]]], repeats: int) -> dict[str, dict[str, list]]:
  """``{network: {measure: [seconds per repeat]}}``, one call of every network and measure per repeat."""
  seconds: dict[str, dict[str, list]] = {name: {key: [] for key in fns} for name, fns in calls.items()}
  for _ in range(repeats):
    for name, fns in calls.items():
      for key, fn in fns.items():
        start = time.perf_counter()
        jax.block_until_ready(fn())
        seconds[name][key].append(time.perf_counter() - start)
  return seconds


def compare_costs(networks: dict[str, tuple[nn.Module, ArrayTree, ArrayTree]], *, input_shape: tuple[int, ...],
                  num_classes: int, batch_size: int, eval_batch_size: int, repeats: int = 7) -> dict[str, dict]:
  """Per network ``(model, variables, mask)``: parameters (kept), FLOPs per example (from shapes, and XLA's), a
  masked SGD train step at ``batch_size`` and eval latency at batch 1 and ``eval_batch_size``, timed interleaved:
  each time is the median over ``repeats`` with ``<key>_range`` = [fastest, slowest]."""
  calls, costs = {}, {}
  for name, (model, variables, mask) in networks.items():
    calls[name], peak = _programs(model, variables, mask, input_shape, num_classes, batch_size, eval_batch_size)
    costs[name] = {'parameters': parameter_count(variables['params'], mask),
                   'flops_per_example': flops.forward_flops(model, variables, input_shape),
                   'xla_flops_per_example': xla_flops(model, variables, input_shape),
                   'xla_backend': jax.default_backend(), 'peak_bytes': peak}
  for name, measured in _interleaved_seconds(calls, repeats).items():
    for key, values in measured.items():
      costs[name][key] = statistics.median(values)
      costs[name][f'{key}_range'] = [min(values), max(values)]
    costs[name]['images_per_second'] = batch_size / costs[name]['train_step_seconds']
  return costs


def _verdict(first: dict, last: dict, key: str) -> str:
  """'faster' / 'slower' when the two ranges of ``key`` do not overlap, else 'not measurably different'."""
  (low_a, high_a), (low_b, high_b) = first[f'{key}_range'], last[f'{key}_range']
  if high_b < low_a:
    return 'faster'
  if low_b > high_a:
    return 'slower'
  return 'not measurably different'


def comparison_table(costs: dict[str, dict[str, Any]]) -> str:
  """Networks side by side: counts with the ratio of the last to the first; times as median [range], with whether
  the last is measurably faster (ranges apart) or not."""
  names = list(costs)
  first, last = costs[names[0]], costs[names[-1]]
  backend = first.get('xla_backend', '?')
  lines = [f'{"":<30}' + ''.join(f'{n:>26}' for n in names) + f'{"ratio":>9}  verdict']
  for key in ('parameters', 'flops_per_example', 'xla_flops_per_example', 'peak_bytes', 'images_per_second'):
    if key in first:
      values = [costs[n][key] for n in names]
      label = f'{key} (XLA {backend})' if key.startswith('xla') else key
      ratio = values[-1] / values[0] if values[0] else float('nan')
      lines.append(f'{label:<30}' + ''.join(f'{v:>26.4g}' for v in values) + f'{ratio:>9.3f}')
  for key in [k for k in first if k.endswith('_seconds')]:
    cells = [f'{costs[n][key]:.4g} [{costs[n][key + "_range"][0]:.3g}-{costs[n][key + "_range"][1]:.3g}]'
             for n in names]
    ratio = last[key] / first[key] if first[key] else float('nan')
    lines.append(f'{key:<30}' + ''.join(f'{c:>26}' for c in cells) + f'{ratio:>9.3f}  {_verdict(first, last, key)}')
  return '\n'.join(lines)
