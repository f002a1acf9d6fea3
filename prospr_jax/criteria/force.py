"""Iterative SNIP and FORCE (de Jorge et al. 2021): SNIP rescored under the current mask, exponential schedule.

Both score ``|theta * dL/dw|`` at the masked network, i.e. ``|dL/dc|`` at
``c = mask``. Iterative SNIP keeps pruned weights pruned; FORCE lets them keep
receiving gradient and compete again every round, so a weight can come back.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from prospr_jax import masks as masks_lib
from prospr_jax.criteria import iterative, scores as scores_lib
from prospr_jax.criteria.snip import snip_gradient

PyTree = Any


def _iterative_snip(params, batches, *, loss_fn, sparsity, rounds, mask_fn, invert, structured, prunable,
                    monotone) -> PyTree:
  mask = scores_lib.data_mask_variables(params, batches, loss_fn=loss_fn, structured=structured,
                                        prunable=prunable)
  score_fn = lambda c: jax.tree.map(jnp.abs, snip_gradient(params, batches, c, loss_fn=loss_fn))
  return iterative.prune_iteratively(score_fn, mask, sparsity=sparsity, rounds=rounds, mask_fn=mask_fn,
                                     monotone=monotone, invert=invert)


def iterative_snip_saliency(params: PyTree, batches: PyTree, *, loss_fn: scores_lib.LossFn, sparsity: float,
                            rounds: int = 60, mask_fn: iterative.MaskFn = masks_lib.global_topk_mask,
                            invert: bool = False, structured: bool = False,
                            prunable: masks_lib.Prunable | None = None) -> PyTree:
  """Iterative SNIP: SNIP on the masked network each round; pruned weights stay pruned (monotone)."""
  return _iterative_snip(params, batches, loss_fn=loss_fn, sparsity=sparsity, rounds=rounds, mask_fn=mask_fn,
                         invert=invert, structured=structured, prunable=prunable, monotone=True)


def force_saliency(params: PyTree, batches: PyTree, *, loss_fn: scores_lib.LossFn, sparsity: float,
                   rounds: int = 60, mask_fn: iterative.MaskFn = masks_lib.global_topk_mask,
                   invert: bool = False, structured: bool = False,
                   prunable: masks_lib.Prunable | None = None) -> PyTree:
  """FORCE: like iterative SNIP, but every weight, pruned or not, is rescored each round and may return."""
  return _iterative_snip(params, batches, loss_fn=loss_fn, sparsity=sparsity, rounds=rounds, mask_fn=mask_fn,
                         invert=invert, structured=structured, prunable=prunable, monotone=False)
