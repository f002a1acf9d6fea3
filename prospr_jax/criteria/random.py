"""Random pruning: the baseline every criterion must beat."""

from __future__ import annotations

import jax
from chex import ArrayTree

from prospr_jax import masks as masks_lib
from prospr_jax.criteria import model_inputs, scores as scores_lib


@scores_lib.channel_gate(scores_lib.KERNEL)
@model_inputs.accepts_models(needs=None)
def random_saliency(
    params: ArrayTree,
    batches: ArrayTree | None = None,
    *,
    loss_fn: scores_lib.LossFn | None = None,
    structured: bool = False,
    prunable: masks_lib.Prunable | None = None,
    rng: jax.Array | int = 0,
) -> ArrayTree:
  """Independent uniform scores, normalised to sum 1; reproducible from ``rng`` (a key or a seed)."""
  first_batch = None if batches is None else scores_lib.batch_at(batches, 0)
  mask = scores_lib.mask_variables(params, first_batch, loss_fn=loss_fn, structured=structured, prunable=prunable)
  key = jax.random.key(rng) if isinstance(rng, int) else rng
  leaves, treedef = jax.tree.flatten(mask)
  keys = jax.random.split(key, len(leaves))
  uniform = [jax.random.uniform(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)]
  return scores_lib.normalized_scores(jax.tree.unflatten(treedef, uniform))
