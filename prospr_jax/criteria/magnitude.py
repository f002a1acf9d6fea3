"""Magnitude at initialization: keep the largest initial weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from chex import ArrayTree

from prospr_jax import masks as masks_lib
from prospr_jax.criteria import model_inputs, scores as scores_lib


@scores_lib.channel_gate(scores_lib.KERNEL)
@model_inputs.accepts_models(needs=None)
def magnitude_saliency(
    params: ArrayTree,
    batches: ArrayTree | None = None,
    *,
    loss_fn: scores_lib.LossFn | None = None,
    structured: bool = False,
    prunable: masks_lib.Prunable | None = None,
) -> ArrayTree:
  """Scores ``|w| / sum |w|``; per output channel the channel's L1 norm. Data-free.

  ``batches`` and ``loss_fn`` are accepted for a uniform signature; structured
  mode uses them only to find the output layer when ``prunable`` is not given.
  """
  first_batch = None if batches is None else scores_lib.batch_at(batches, 0)
  mask = scores_lib.mask_variables(params, first_batch, loss_fn=loss_fn, structured=structured, prunable=prunable)
  # The mask's gradient of sum(|c * w|) is |w| summed over what each entry covers.
  magnitudes = jax.grad(lambda c: sum(jnp.sum(jnp.abs(p)) for p in
                                      jax.tree.leaves(masks_lib.apply_mask(params, c))))(mask)
  return scores_lib.normalized_scores(magnitudes)
