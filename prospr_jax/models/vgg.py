"""VGG with BatchNorm: the CIFAR variant (global average pool, one Dense) and the ImageNet one.

The conv stack is torchvision's (3x3 convs with bias, 2x2 max-pools); convs are
He normal fan-out, the classifier N(0, 0.01), biases zero (torchvision's init).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from prospr_jax.models.initializers import he_normal_fan_out

STACKS: dict[int, tuple[int | str, ...]] = {
    11: (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'),
    13: (64, 64, 'M', 128, 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'),
    16: (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M'),
    19: (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M', 512, 512, 512, 512, 'M'),
}
classifier_init = nn.initializers.normal(0.01)


class VGG(nn.Module):
  """VGG-`depth`. ``imagenet_head``: 7x7 average pool and three Dense layers with dropout; else GAP + Dense."""
  depth: int = 16
  num_classes: int = 10
  imagenet_head: bool = False
  dropout_rate: float = 0.5
  width: float = 1.0  # channel multiplier (tests use narrow VGGs)
  conv_general_dilated: Callable[..., Any] | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    for layer in STACKS[self.depth]:
      if layer == 'M':
        x = nn.max_pool(x, (2, 2), (2, 2))
        continue
      x = nn.Conv(max(1, int(layer * self.width)), (3, 3), padding=1, kernel_init=he_normal_fan_out,
                  conv_general_dilated=self.conv_general_dilated)(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    if not self.imagenet_head:
      return nn.Dense(self.num_classes, kernel_init=classifier_init)(x.mean(axis=(1, 2)))
    x = _adaptive_avg_pool(x, (7, 7)).reshape(x.shape[0], -1)
    for features in (4096, 4096):
      x = nn.relu(nn.Dense(features, kernel_init=classifier_init)(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, kernel_init=classifier_init)(x)


def _adaptive_avg_pool(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """torch's AdaptiveAvgPool2d for inputs whose size is a multiple of ``size`` (or smaller: repeat)."""
  height, width = x.shape[1:3]
  if height < size[0]:
    x = jnp.repeat(jnp.repeat(x, -(-size[0] // height), axis=1), -(-size[1] // width), axis=2)
    height, width = x.shape[1:3]
  window = (height // size[0], width // size[1])
  return nn.avg_pool(x, window, window)
