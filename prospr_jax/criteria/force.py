"""Iterative SNIP and FORCE (de Jorge et al. 2021): SNIP rescored under the current mask, exponential schedule.

Both score ``|theta * dL/dw|`` at the masked network, i.e. ``|dL/dc|`` at
``c = mask``. Iterative SNIP keeps pruned weights pruned; FORCE lets them keep
receiving gradient and compete again every round, so a weight can come back.
The authors' code (naver/force) draws new batches every round: pass
``round_batches(r)`` for that; without it every round rescores ``batches``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from chex import ArrayTree

from prospr_jax import masks as masks_lib, topk
from prospr_jax.criteria import iterative, model_inputs, scores as scores_lib
from prospr_jax.criteria.snip import snip_gradient

RoundBatches = Callable[[int], ArrayTree]


def _iterative_snip(params, batches, *, loss_fn, sparsity, rounds, mask_fn, invert, structured, prunable,
                    monotone, round_batches) -> ArrayTree:
  mask = scores_lib.data_mask_variables(params, batches, loss_fn=loss_fn, structured=structured,
                                        prunable=prunable)
  round_index = itertools.count()

  def score_fn(c):
    r = next(round_index)
    scored = batches if round_batches is None or r == 0 else round_batches(r)  # round 0 scores ``batches``
    return jax.tree.map(jnp.abs, snip_gradient(params, scored, c, loss_fn=loss_fn))

  return iterative.prune_iteratively(score_fn, mask, sparsity=sparsity, rounds=rounds, mask_fn=mask_fn,
                                     monotone=monotone, invert=invert)


@model_inputs.accepts_models()
def iterative_snip_saliency(params: ArrayTree, batches: ArrayTree, *, loss_fn: scores_lib.LossFn, sparsity: float,
                            rounds: int = 60, mask_fn: iterative.MaskFn = topk.global_topk_mask,
                            invert: bool = False, structured: bool = False,
                            prunable: masks_lib.Prunable | None = None,
                            round_batches: RoundBatches | None = None) -> ArrayTree:
  """Iterative SNIP: SNIP on the masked network each round; pruned weights stay pruned (monotone).

  ``round_batches(r)`` gives round r's batches (r >= 1; round 0 uses ``batches``), same shapes.
  """
  return _iterative_snip(params, batches, loss_fn=loss_fn, sparsity=sparsity, rounds=rounds, mask_fn=mask_fn,
                         invert=invert, structured=structured, prunable=prunable, monotone=True,
                         round_batches=round_batches)


@model_inputs.accepts_models()
def force_saliency(params: ArrayTree, batches: ArrayTree, *, loss_fn: scores_lib.LossFn, sparsity: float,
                   rounds: int = 60, mask_fn: iterative.MaskFn = topk.global_topk_mask,
                   invert: bool = False, structured: bool = False,
                   prunable: masks_lib.Prunable | None = None,
                   round_batches: RoundBatches | None = None) -> ArrayTree:
  """FORCE: like iterative SNIP, but every weight, pruned or not, is rescored each round and may return."""
  return _iterative_snip(params, batches, loss_fn=loss_fn, sparsity=sparsity, rounds=rounds, mask_fn=mask_fn,
                         invert=invert, structured=structured, prunable=prunable, monotone=False,
                         round_batches=round_batches)
