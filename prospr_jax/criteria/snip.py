"""SNIP: connection sensitivity at initialization (Lee et al. 2019), ProsPr with M = 0."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from chex import ArrayTree

from prospr_jax import masks as masks_lib
from prospr_jax.criteria import model_inputs, scores as scores_lib


@functools.partial(jax.jit, static_argnames=('loss_fn',))
def snip_gradient(params, batches, mask, *, loss_fn):
  """``dL/dc`` at ``c = mask`` with ``L`` the mean loss over the batches."""
  def mean_loss(c):
    masked = masks_lib.apply_mask(params, c)
    # vmap, not lax.map: on XLA:CPU convolutions inside loops leave the fast path (all batches in memory at once).
    return jnp.mean(jax.vmap(lambda batch: loss_fn(masked, batch))(batches))
  return jax.grad(mean_loss)(mask)


@model_inputs.accepts_models()
def snip_saliency(
    params: ArrayTree,
    batches: ArrayTree,
    *,
    loss_fn: scores_lib.LossFn,
    structured: bool = False,
    prunable: masks_lib.Prunable | None = None,
) -> ArrayTree:
  """SNIP scores ``|dL(c * w)/dc| / sum |dL/dc|`` at ``c = 1`` (paper eqs. 1-2).

  ``batches`` has a leading axis of batches, like ProsPr's; with several, ``L``
  is their mean loss (gradients accumulated over the batches, as SNIP-MB).
  """
  mask = scores_lib.data_mask_variables(params, batches, loss_fn=loss_fn, structured=structured,
                                        prunable=prunable)
  return scores_lib.normalized_scores(snip_gradient(params, batches, mask, loss_fn=loss_fn))
