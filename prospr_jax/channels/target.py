"""What a structured sparsity counts: a fraction of the channels, or of the weights the kept channels own.

``config.prune.structured_target``: ``'channels'`` removes that fraction of the
channels. ``'weights'`` keeps the fewest channels, taken in the scores' order
(the configured mask function at a channel sparsity), whose kernels keep at least
``1 - sparsity`` of the network's kernel weights (every entry the kept channels
own, the next layers' input rows included: what the compact network keeps).
Removing a channel removes a filter and the rows that read it, so a channel
sparsity s keeps roughly (1 - s)^2 of the weights, and a weight sparsity s
keeps roughly sqrt(1 - s) of the channels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from chex import ArrayTree

from prospr_jax import masks as masks_lib, topk
from prospr_jax.channels.groups import ChannelMask, ChannelPlan, kernel_mask

TARGETS = ('channels', 'weights')


def weight_density(plan: ChannelPlan, mask: ChannelMask, params: ArrayTree) -> float:
  """The fraction of the kernel weights the channels of ``mask`` own."""
  kept = masks_lib.named_leaves(kernel_mask(plan, mask, params))
  return sum(int(np.count_nonzero(np.asarray(m))) for _, m in kept) / sum(int(np.size(m)) for _, m in kept)


def mask_for_weight_sparsity(plan: ChannelPlan, params: ArrayTree, scores: ChannelMask, sparsity: float,
                             mask_at: Callable[[ChannelMask, float], ChannelMask]) -> ChannelMask:
  """The channel mask with the fewest channels, ``mask_at(scores, channel_sparsity)``, that keeps at least
  ``1 - sparsity`` of the kernel weights (a binary search over the kept count: more channels, more weights)."""
  target = 1.0 - topk.check_sparsity(sparsity)
  total = sum(int(np.size(s)) for _, s in masks_lib.named_leaves(scores))
  at = lambda count: mask_at(scores, 1.0 - count / total)

  def enough(count: int) -> bool:
    try:
      return weight_density(plan, at(count), params) >= target - 1e-12
    except ValueError:  # a mask this small empties a layer: too few channels
      return False

  low, high = 1, total  # every channel keeps every weight
  while low < high:
    middle = (low + high) // 2
    low, high = (low, middle) if enough(middle) else (middle + 1, high)
  return at(low)
