"""3SP: single shot structured pruning before training (van Amersfoort et al. 2020), compute-aware SNIP.

3SP scores each channel by its SNIP sensitivity (structured SNIP: the mask ``c``
has one entry per channel, ``g_j = dL(c * w)/dc_j`` at ``c = 1`` on one batch)
per unit of compute its removal saves: "a compute-aware scoring mechanism which
enables pruning in units of sensitivity per FLOP removed" (arXiv 2007.00389,
abstract): ``s_j = (|g_j| / F_j) / sum_k |g_k| / F_k``.

``F_j``, the one definition here: the FLOPs per example of the dense network
that removing channel ``j`` saves, read literally. That is producing it (its
filter in every kernel that writes it, tied writers included) and the rows
that later layers read from it (``channel_scores.channel_flops``), 2 FLOPs per
multiply-add. We could not confirm the paper's exact equation in the sources we
could reach (only the abstract): whether its FLOPs count the reading layer, and
any exponent or normaliser on ``F_j``, are our reading, not a quotation. The
same holds for the ``reinit`` and ``rescale`` variants of ProsPr's Table 2
(``prospr_jax/initialization.py``).

Which layers read a channel is not in a params tree, so on channels the costs
come from a channel plan: ``prospr_jax.score_channels(three_sp_saliency, plan,
...)`` computes them (prune.py goes that way), or pass ``channel_costs``
mirroring the scores. Per weight (not the paper's method), removing a weight
saves its multiply-add at each output position: ``F = 2 * positions``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from chex import ArrayTree

from prospr_jax import masks as masks_lib
from prospr_jax.criteria import model_inputs, scores as scores_lib, structured as structured_lib
from prospr_jax.criteria.snip import snip_gradient

NEEDS_A_PLAN = ('3SP divides each channel by the FLOPs its removal saves, which counts the rows that later layers '
                'read from it, and a params tree does not say which later layers read a channel. Score with '
                'prospr_jax.score_channels(prospr_jax.three_sp_saliency, prospr_jax.channel_plan(model, params), '
                'params, batches, loss_fn=...), which computes them from the channel plan (or build a ChannelPlan '
                'for your own network), or pass channel_costs= mirroring the scores')


def weight_flops(params: ArrayTree, mask: ArrayTree, loss_fn: scores_lib.LossFn, batch: ArrayTree) -> ArrayTree:
  """FLOPs per example that removing each weight saves: ``2 * positions`` (a per-weight mask; None elsewhere)."""
  positions = structured_lib.kernel_positions(loss_fn, params, batch)

  def cost(path, m, p):
    if m is None:
      return None
    name = masks_lib.layer_name(path)
    if jnp.shape(m) != jnp.shape(p):
      raise ValueError(NEEDS_A_PLAN)
    if name not in positions:
      raise ValueError(f'3SP cannot find the convolution or matmul that uses {name}, so it cannot cost its '
                       'weights: pass channel_costs=')
    return jnp.full(jnp.shape(m), 2.0 * positions[name], jnp.result_type(m))

  return jax.tree_util.tree_map_with_path(cost, mask, params, is_leaf=masks_lib.is_none)


@model_inputs.accepts_models()
def three_sp_saliency(
    params: ArrayTree,
    batches: ArrayTree,
    *,
    loss_fn: scores_lib.LossFn,
    structured: bool = False,
    prunable: masks_lib.Prunable | None = None,
    channel_costs: ArrayTree | None = None,
) -> ArrayTree:
  """3SP scores ``(|dL/dc| / F) / sum |dL/dc| / F``: SNIP sensitivity per FLOP removed (van Amersfoort et al. 2020).

  ``batches`` as for SNIP (3SP uses one). On channels (``structured``) ``F`` is
  ``channel_costs``: call it through ``prospr_jax.score_channels``, which passes
  ``channel_scores.channel_flops``; without costs it raises. Per weight without ``structured``.
  """
  if structured and channel_costs is None:
    raise ValueError(NEEDS_A_PLAN)
  mask = scores_lib.data_mask_variables(params, batches, loss_fn=loss_fn, structured=structured,
                                        prunable=prunable)
  if channel_costs is None:
    channel_costs = weight_flops(params, mask, loss_fn, scores_lib.batch_at(batches, 0))
  if jax.tree.structure(channel_costs, is_leaf=masks_lib.is_none) != jax.tree.structure(mask, is_leaf=masks_lib.is_none):
    raise ValueError('channel_costs must mirror the scores: one cost per mask entry, None on unmasked leaves')
  gradient = snip_gradient(params, batches, mask, loss_fn=loss_fn)
  per_flop = jax.tree.map(lambda g, f: g / jnp.asarray(f, g.dtype), gradient, channel_costs)
  return scores_lib.normalized_scores(per_flop)
