"""BatchNorm as PyTorch computes it, for every zoo model: the paper's numbers come from PyTorch code.

Two-pass variance (``use_fast_variance=False``: the mean of squared deviations,
not Flax's default ``E[x^2] - E[x]^2``, which cancels in float32 and worsens
exact ProsPr's conditioning) and running averages updated by 0.1 of the batch
statistics (PyTorch's ``momentum=0.1`` is Flax's ``momentum=0.9``).
"""

from __future__ import annotations

import flax.linen as nn


def batch_norm(train: bool) -> nn.BatchNorm:
  """Train mode (``train``): batch statistics; eval mode: the running averages."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, use_fast_variance=False)
