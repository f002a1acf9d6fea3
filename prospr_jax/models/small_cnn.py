"""A small CNN for the offline default experiment (8x8 digits), with BatchNorm."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

from prospr_jax.models.batch_norm import batch_norm


class SmallCNN(nn.Module):
  """conv 3x3 32 - BN - relu - conv 3x3/2 64 - BN - relu - global average pool - dense."""
  num_classes: int = 10
  widths: tuple[int, int] = (32, 64)  # channels of the two convs (compaction narrows them)
  conv_general_dilated: Callable[..., Any] | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    for features, stride in zip(self.widths, (1, 2)):
      x = nn.Conv(features, (3, 3), strides=stride, use_bias=False,
                  conv_general_dilated=self.conv_general_dilated)(x)
      x = nn.relu(batch_norm(train)(x))
    return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))
