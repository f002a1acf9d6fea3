"""Thresholding scores into a mask: the global (or per-layer) top-k with an exact count, ties broken by index.

``global_topk_mask`` keeps ``ceil(N * (1 - sparsity))`` entries of the whole
tree; a mask that empties a layer is refused (``LayerCollapseError``) unless
asked to keep at least one weight per layer.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from chex import ArrayTree

from prospr_jax.masks import check_same_structure, is_none, named_leaves


class LayerCollapseError(ValueError):
  """A mask would remove every weight of a layer: in a chain of layers, no path from input to output (layer collapse).

  ``emptied`` names those layers; ``mask`` is the refused mask, for a caller that can tell whether another path (a
  residual shortcut) bypasses them (``harness/connectivity.py``).
  """

  def __init__(self, message: str, emptied: tuple[str, ...] = (), mask: ArrayTree | None = None):
    super().__init__(message)
    self.emptied, self.mask = tuple(emptied), mask


def check_sparsity(sparsity: float) -> float:
  """Return ``sparsity`` if it is a fraction in [0, 1), raise ValueError otherwise."""
  if not (isinstance(sparsity, (int, float, np.floating)) and 0.0 <= float(sparsity) < 1.0):
    raise ValueError(f'sparsity must be in [0, 1) (the fraction of weights to remove), got {sparsity!r}')
  return float(sparsity)


def num_to_keep(total: int, sparsity: float) -> int:
  """``ceil(total * (1 - sparsity))``, robust to float round-off (10 * (1 - 0.7) keeps 3)."""
  return math.ceil(round(total * (1.0 - check_sparsity(sparsity)), 6))


@jax.jit
def _finite_per_leaf(leaves: list[jax.Array]) -> jax.Array:
  return jnp.stack([jnp.all(jnp.isfinite(s)) for s in leaves])


def check_finite_scores(scores: ArrayTree, hint: str = '') -> None:
  """Raise ValueError naming every layer whose scores hold NaN or Inf."""
  items = named_leaves(scores)
  if not items:
    return
  finite = np.asarray(_finite_per_leaf([jnp.asarray(s) for _, s in items]))
  bad = [name for (name, _), ok in zip(items, finite) if not ok]
  if bad:
    raise ValueError(
        f'scores contain NaN or Inf in {", ".join(bad)}. '
        + (hint or 'If they come from ProsPr, the inner loop diverged: try a smaller inner_lr '
                 '(config.prune.inner_lr), and check the inputs hold no NaN.'))


def _ranked_as_computed(leaves: list[Any]) -> contextlib.AbstractContextManager:
  """x64 while ranking float64 scores (``precision='float64'``): in float32 distinct scores could tie."""
  wide = any(np.dtype(getattr(s, 'dtype', None) or np.asarray(s).dtype) == np.float64 for s in leaves)
  wide = wide and not jax.config.jax_enable_x64
  return jax.enable_x64(True) if wide else contextlib.nullcontext()


def _descending_rank(flat: jax.Array) -> jax.Array:
  """Each entry's position from the highest score down; equal scores keep index order."""
  order = jnp.argsort(-flat, stable=True)
  return jnp.zeros(flat.size, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))


def _split_like(flat: jax.Array, leaves: list[jax.Array]) -> list[jax.Array]:
  pieces = jnp.split(flat, np.cumsum([s.size for s in leaves])[:-1])
  return [p.reshape(s.shape) for p, s in zip(pieces, leaves)]


@functools.partial(jax.jit, static_argnames=('keep_one_per_layer',))
def _global_keep(leaves: list[jax.Array], k: jax.Array, keep_one_per_layer: bool) -> list[jax.Array]:
  """Top-``k`` over the concatenated leaves (``k`` traced: one compile for every sparsity)."""
  flat = jnp.concatenate([jnp.ravel(s) for s in leaves])
  rank = _descending_rank(flat)
  if not keep_one_per_layer:
    return _split_like(rank < k, leaves)
  # Every layer first keeps its best entry; the other k - L slots go by global rank.
  offsets = np.concatenate([[0], np.cumsum([s.size for s in leaves])[:-1]])
  best = jnp.asarray(offsets) + jnp.stack([jnp.argmax(jnp.ravel(s)) for s in leaves])
  reserved = jnp.zeros(flat.size, bool).at[best].set(True)
  order = jnp.argsort(rank)
  reserved_ranked = reserved[order]
  filled = (jnp.cumsum(~reserved_ranked) <= k - len(leaves)) & ~reserved_ranked
  keep = jnp.zeros(flat.size, bool).at[order].set(reserved_ranked | filled)
  return _split_like(keep, leaves)


def _mask_tree(scores: ArrayTree, kept_leaves: list[jax.Array]) -> ArrayTree:
  kept = iter(kept_leaves)
  return jax.tree.map(lambda s: None if s is None else next(kept), scores, is_leaf=is_none)


def global_topk_mask(scores: ArrayTree, sparsity: float, *, keep_one_per_layer: bool = False) -> ArrayTree:
  """Keep the ``ceil(N * (1 - sparsity))`` highest scores over all layers (paper Alg. 1, lines 11-12).

  Ties are broken by index (tree order, then row-major), so the kept count is
  exact. A mask that would empty a layer is refused with a ValueError naming
  the layers, unless ``keep_one_per_layer``: then every layer first keeps its
  best entry and the rest of the budget goes by global rank (the same mask as
  plain top-k whenever that empties no layer). Returns a tree of bool arrays.
  Runs eagerly (it checks values), not under ``jax.jit``.
  """
  items = named_leaves(scores)
  if not items:
    raise ValueError('scores hold no array: every leaf is None, so there is nothing to threshold')
  check_finite_scores(scores)
  names, leaves = zip(*items)
  k = num_to_keep(sum(np.size(s) for s in leaves), sparsity)
  if keep_one_per_layer and k < len(leaves):
    raise ValueError(f'cannot keep one entry in each of {len(leaves)} layers with only {k} to keep '
                     f'(sparsity {sparsity}): lower the sparsity')
  with _ranked_as_computed(leaves):
    kept = _global_keep([jnp.asarray(s) for s in leaves], jnp.int32(k), keep_one_per_layer)
  emptied = [name for name, any_kept in zip(names, np.asarray(jnp.stack([jnp.any(m) for m in kept])))
             if not any_kept]
  if emptied:
    raise LayerCollapseError(
        f'a global top-k mask at sparsity {sparsity} would remove every weight of {", ".join(emptied)}, '
        'disconnecting the network. Lower the sparsity, or keep one weight per layer (keep_one_per_layer=True; in a '
        'config, config.prune.keep_one_per_layer=True).', emptied, _mask_tree(scores, kept))
  return _mask_tree(scores, kept)


@jax.jit
def _layerwise_keep(leaves: list[jax.Array], counts: list[jax.Array]) -> list[jax.Array]:
  return [(_descending_rank(jnp.ravel(s)) < c).reshape(s.shape) for s, c in zip(leaves, counts)]


def layerwise_topk_mask(scores: ArrayTree, sparsity: float | ArrayTree | None = None, *,
                        keep_counts: ArrayTree | None = None) -> ArrayTree:
  """Keep the highest scores inside each layer, ties by index.

  ``sparsity`` is one fraction for all layers (each keeps ``ceil(n_l * (1 - s))``)
  or a tree mirroring ``scores`` with one fraction per layer; ``keep_counts`` is
  such a tree of exact integer counts instead.
  """
  check_finite_scores(scores)
  if (sparsity is None) == (keep_counts is None):
    raise ValueError('pass exactly one of sparsity and keep_counts')
  if keep_counts is None:
    if isinstance(sparsity, (int, float, np.floating)):
      sparsity = jax.tree.map(lambda s: None if s is None else sparsity, scores, is_leaf=is_none)
    check_same_structure(sparsity, jax.tree.map(lambda s: 0, scores, is_leaf=is_none), 'sparsity')
    keep_counts = jax.tree.map(lambda s, sp: None if s is None else num_to_keep(s.size, sp), scores, sparsity,
                               is_leaf=is_none)
  leaves = [s for _, s in named_leaves(scores)]
  counts = [jnp.int32(c) for _, c in named_leaves(keep_counts)]
  with _ranked_as_computed(leaves):
    return _mask_tree(scores, _layerwise_keep([jnp.asarray(s) for s in leaves], counts))
