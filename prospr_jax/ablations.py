"""The sanity checks of Frankle et al. 2021 ("PruneSpec neural networks at initialization: why are we missing
the mark?"), for any criterion: shuffle the mask within each layer, reinitialize the kept weights, invert scores.

A criterion that passes them (accuracy drops) uses more than per-layer densities.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from chex import ArrayTree

from prospr_jax import masks as masks_lib

ABLATIONS: dict[str, str] = {
    'none': 'the mask as scored',
    'shuffle': 'each layer\'s mask randomly permuted: same per-layer counts, random positions',
    'reinit': 'kept weights re-sampled from the initialiser: same mask, new values',
    'invert': 'keep the lowest scores instead of the highest (every round, for iterative criteria)',
}


def shuffle_within_layers(masks: ArrayTree, rng: jax.Array | int) -> ArrayTree:
  """Permute each layer's mask entries at random: the kept count of every layer is unchanged."""
  key = jax.random.key(rng) if isinstance(rng, int) else rng
  leaves, treedef = jax.tree.flatten(masks)
  keys = jax.random.split(key, len(leaves))
  shuffled = [jax.random.permutation(k, m.ravel()).reshape(m.shape) for k, m in zip(keys, leaves)]
  return jax.tree.unflatten(treedef, shuffled)


def reinitialize(params: ArrayTree, masks: ArrayTree, fresh_params: ArrayTree) -> ArrayTree:
  """Masked leaves take their values from ``fresh_params`` (a new draw of the initialiser); the rest stay."""
  masks_lib.check_same_structure(masks, params)
  return jax.tree.map(lambda m, p, f: p if m is None else f, masks, params, fresh_params, is_leaf=masks_lib.is_none)


def invert_scores(scores: ArrayTree) -> ArrayTree:
  """Negated scores: top-k then keeps what the criterion ranks lowest (the invert ablation)."""
  return jax.tree.map(jnp.negative, scores)
