"""3SP: single shot structured pruning before training (van Amersfoort et al. 2020), compute-aware SNIP.

3SP scores each channel by its SNIP sensitivity (structured SNIP: the mask ``c``
has one entry per channel, ``g_j = dL(c * w)/dc_j`` at ``c = 1`` on one batch,
their eq. 2 with a channel mask) per unit of compute its removal saves: "a
compute-aware scoring mechanism which enables pruning in units of sensitivity
per FLOP removed" (abstract; section 3): ``s_j = (|g_j| / F_j) / sum_k |g_k| / F_k``
with ``F_j`` the FLOPs per example of the dense network that removing channel
``j`` saves. A channel is removed if it matters little to the loss or costs
much compute. Not found in the sources we could reach here: any exponent or
normaliser on ``F_j`` in the paper's equation, and the exact ``reinit`` and
``rescale`` of ProsPr's Table 2; we divide by ``F_j`` as the abstract says, and
take the variants as the names read (``prospr_jax/initialization.py``).

``channel_costs`` gives ``F`` as a tree mirroring the scores (``prune.py``
derives it from the model's channel plan: the channel's own filter and the
rows that later layers read from it, ``channel_scores.channel_flops``). Without it,
each entry costs what producing it costs (``2 * positions * weights``, read off
the loss's jaxpr): the producing layer's share only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from chex import ArrayTree

from prospr_jax import masks as masks_lib
from prospr_jax.criteria import model_inputs, scores as scores_lib, structured as structured_lib
from prospr_jax.criteria.snip import snip_gradient


def own_costs(params: ArrayTree, mask: ArrayTree, loss_fn: scores_lib.LossFn, batch: ArrayTree) -> ArrayTree:
  """FLOPs per example of producing each mask entry: ``2 * positions * (weights the entry covers)``."""
  positions = structured_lib.kernel_positions(loss_fn, params, batch)

  def cost(path, m, p):
    if m is None:
      return None
    name = masks_lib.layer_name(path)
    if name not in positions:
      raise ValueError(f'3SP cannot find the convolution or matmul that uses {name}, so it cannot cost its '
                       'channels: pass channel_costs=')
    return jnp.full(jnp.shape(m), 2.0 * positions[name] * np.size(p) / np.size(m), jnp.result_type(m))

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

  ``batches`` as for SNIP (3SP uses one). Per weight without ``structured``.
  """
  mask = scores_lib.data_mask_variables(params, batches, loss_fn=loss_fn, structured=structured,
                                        prunable=prunable)
  if channel_costs is None:
    channel_costs = own_costs(params, mask, loss_fn, scores_lib.batch_at(batches, 0))
  if jax.tree.structure(channel_costs, is_leaf=masks_lib.is_none) != jax.tree.structure(mask, is_leaf=masks_lib.is_none):
    raise ValueError('channel_costs must mirror the scores: one cost per mask entry, None on unmasked leaves')
  gradient = snip_gradient(params, batches, mask, loss_fn=loss_fn)
  per_flop = jax.tree.map(lambda g, f: g / jnp.asarray(f, g.dtype), gradient, channel_costs)
  return scores_lib.normalized_scores(per_flop)
