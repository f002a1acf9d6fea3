"""How a sparsity budget is split across layers: global top-k, uniform per layer, or ERK.

Every distribution keeps exactly ``ceil(N * (1 - sparsity))`` entries in all;
``make_mask(scores, sparsity, distribution=...)`` is the one entry point.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from chex import ArrayTree

from prospr_jax import masks as masks_lib, topk


def _largest_remainder(quotas: np.ndarray, sizes: np.ndarray, total: int) -> np.ndarray:
  """Integer counts near ``quotas``, each within [0, size], summing exactly to ``total``."""
  counts = np.minimum(np.floor(quotas).astype(np.int64), sizes)
  remainders = np.where(counts < sizes, quotas - counts, -1.0)
  for index in np.argsort(-remainders, kind='stable'):
    if counts.sum() >= total:
      break
    if counts[index] < sizes[index]:
      counts[index] += 1
  return counts


def erk_densities(shapes: list[tuple[int, ...]], density: float, power_scale: float = 1.0) -> list[float]:
  """Erdos-Renyi-Kernel densities (Evci et al. 2020): layer l keeps about ``eps * (sum(shape) / prod(shape))``.

  ``eps`` is chosen so the kept total is ``density * N``; a layer whose density
  would exceed 1 is made dense and ``eps`` is solved again for the rest.
  """
  sizes = [math.prod(shape) for shape in shapes]
  raw = [(sum(shape) / math.prod(shape)) ** power_scale for shape in shapes]
  dense: set[int] = set()
  while True:
    budget = density * sum(sizes) - sum(sizes[i] for i in dense)
    divisor = sum(raw[i] * sizes[i] for i in range(len(shapes)) if i not in dense)
    eps = budget / divisor if divisor else 0.0
    over = [i for i in range(len(shapes)) if i not in dense and eps * raw[i] > 1.0]
    if not over:
      return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))]
    dense.add(max(over, key=lambda i: raw[i]))


def layer_keep_counts(scores: ArrayTree, sparsity: float, distribution: str) -> list[int]:
  """Kept entries per masked leaf (tree order) under ``distribution``; they sum to ``ceil(N * (1 - sparsity))``."""
  shapes = [tuple(np.shape(s)) for _, s in masks_lib.named_leaves(scores)]
  sizes = np.array([math.prod(shape) for shape in shapes])
  total = topk.num_to_keep(int(sizes.sum()), sparsity)
  if distribution == 'uniform':
    densities = np.full(len(shapes), 1.0 - sparsity)
  elif distribution == 'erk':
    densities = np.array(erk_densities(shapes, 1.0 - sparsity))
  else:
    raise ValueError(f'layer_keep_counts has no rule for {distribution!r}')
  return [int(c) for c in _largest_remainder(densities * sizes, sizes, total)]


def make_mask(scores: ArrayTree, sparsity: float, distribution: str = 'global', *,
              keep_one_per_layer: bool = False) -> ArrayTree:
  """Threshold ``scores`` at ``sparsity``: ``'global'`` top-k, or per-layer top-k with ``'uniform'``/``'erk'`` counts."""
  get_distribution(distribution)
  if distribution == 'global':
    return topk.global_topk_mask(scores, sparsity, keep_one_per_layer=keep_one_per_layer)
  counts = iter(layer_keep_counts(scores, sparsity, distribution))
  per_layer = jax.tree.map(lambda s: None if s is None else next(counts), scores, is_leaf=masks_lib.is_none)
  return topk.layerwise_topk_mask(scores, keep_counts=per_layer)


DISTRIBUTIONS: dict[str, str] = {
    'global': 'one threshold over all layers (the paper\'s choice)',
    'uniform': 'the same density in every layer',
    'erk': 'Erdos-Renyi-Kernel densities, dense where a layer would exceed 1 (Evci et al. 2020)',
}


def get_distribution(name: str) -> str:
  if name not in DISTRIBUTIONS:
    raise ValueError(f'unknown distribution {name!r}; valid names: {", ".join(sorted(DISTRIBUTIONS))}')
  return name

