"""Iterative pruning: rescore under the current mask, prune a little more, repeat (exponential schedule).

Iterative criteria return scores like the others, ranked so that thresholding
them at the final sparsity with the same ``mask_fn`` gives the iterative mask:
kept entries score in [1, 2] (their last-round score), pruned ones below 1
(monotone methods: by the round they were pruned in, later is higher).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from chex import ArrayTree

from prospr_jax import ablations, topk

MaskFn = Callable[[ArrayTree, float], ArrayTree]


def exponential_schedule(sparsity: float, rounds: int) -> list[float]:
  """Sparsity after each round: density ``d ** (r / R)`` for r = 1..R, ending exactly at ``sparsity``."""
  topk.check_sparsity(sparsity)
  if rounds < 1:
    raise ValueError(f'rounds must be >= 1, got {rounds}')
  density = 1.0 - sparsity
  return [1.0 - density ** (r / rounds) for r in range(1, rounds)] + [sparsity]


@functools.partial(jax.jit, static_argnames=('invert', 'monotone'))
def _round_scores(scores: ArrayTree, keep: ArrayTree, *, invert: bool, monotone: bool) -> ArrayTree:
  """Negate for the invert ablation; with ``monotone``, put pruned entries below every kept one."""
  if invert:
    scores = ablations.invert_scores(scores)
  if monotone:
    floor = jnp.min(jnp.stack([jnp.min(s) for s in jax.tree.leaves(scores)])) - 1.0
    scores = jax.tree.map(lambda s, k: jnp.where(k, s, floor), scores, keep)
  return scores


@jax.jit
def _record_pruned(pruned_in: ArrayTree, keep: ArrayTree, new_keep: ArrayTree, round_index: jax.Array) -> ArrayTree:
  return jax.tree.map(lambda p, k, n: jnp.where(k & ~n, round_index, p), pruned_in, keep, new_keep)


@functools.partial(jax.jit, static_argnames=('monotone',))
def _encode(keep: ArrayTree, scores: ArrayTree, pruned_in: ArrayTree, rounds: jax.Array, *, monotone: bool) -> ArrayTree:
  """Kept entries in [1, 2] by last-round score; pruned ones in [0, 1) (by round when monotone)."""
  top = jnp.maximum(jnp.max(jnp.stack([jnp.max(jnp.abs(s)) for s in jax.tree.leaves(scores)])), 1e-30)
  final = jax.tree.map(lambda s: s / top, scores)
  if monotone:
    below = jax.tree.map(lambda p: p / (rounds + 1.0), pruned_in)
  else:
    below = jax.tree.map(lambda f: 0.25 * (f + 1.0), final)  # in [0, 0.5]
  return jax.tree.map(lambda k, f, b: jnp.where(k, 1.5 + 0.5 * f, b), keep, final, below)


def prune_iteratively(score_fn: Callable[[ArrayTree], ArrayTree], template: ArrayTree, *, sparsity: float, rounds: int,
                      mask_fn: MaskFn, monotone: bool, invert: bool = False) -> ArrayTree:
  """Run the schedule: ``score_fn(c)`` scores every entry with the network masked by ``c`` (floats).

  ``monotone``: a pruned entry stays pruned (its score is forced below every
  other); otherwise it competes again each round (FORCE). ``invert`` keeps the
  lowest scores each round (the sanity-check ablation).
  """
  keep = jax.tree.map(lambda c: jnp.ones(c.shape, bool), template)
  pruned_in = jax.tree.map(lambda c: jnp.zeros(c.shape, jnp.int32), template)
  for round_index, round_sparsity in enumerate(exponential_schedule(sparsity, rounds), start=1):
    scores = score_fn(jax.tree.map(lambda k, c: k.astype(c.dtype), keep, template))
    topk.check_finite_scores(scores)
    scores = _round_scores(scores, keep, invert=invert, monotone=monotone)
    new_keep = mask_fn(scores, round_sparsity)
    pruned_in = _record_pruned(pruned_in, keep, new_keep, jnp.int32(round_index))
    keep = new_keep
  return _encode(keep, scores, pruned_in, jnp.float32(rounds), monotone=monotone)
