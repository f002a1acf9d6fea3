"""VGG with BatchNorm as the authors build it (mil-ad/prospr ``models/models.py``, after GraSP's VGG).

The conv stack is torchvision's ``make_layers`` (3x3 convs with bias, BatchNorm,
ReLU, 2x2 max-pools) on a layer list with **four** max-pools: no pool after the
last conv block. torchvision's init runs on it: convs He normal fan-out, conv
biases 0, BatchNorm scale 1 and bias 0.

- CIFAR head (default): the last map (2x2 on 32x32 inputs) is averaged
  (``AdaptiveAvgPool2d(1)``) into one Dense, which the authors create after
  torchvision's init, so it keeps PyTorch's default Linear init (kernel and bias
  U(+-1/sqrt(512))).
- ``imagenet_head``: the 14x14 map (224 inputs) is average-pooled to 7x7
  (``AdaptiveAvgPool2d(7)``), then torchvision's classifier (4096-4096-classes,
  ReLU, dropout) with its init: N(0, 0.01) kernels, zero biases.

Widths: ``widths`` gives every conv's channels (default: the stack's, times
``width``), ``hidden`` the ImageNet head's two Dense layers; compaction
(``prospr_jax.models.compaction``) sets both to the channels a structured mask keeps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prospr_jax.models.batch_norm import batch_norm
from prospr_jax.models.initializers import he_normal_fan_out, torch_dense
from prospr_jax.xla_cpu.pooling import max_pool_2x2

STACKS: dict[int, tuple[int | str, ...]] = {
    11: (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512),
    13: (64, 64, 'M', 128, 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512),
    16: (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512),
    19: (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M', 512, 512, 512, 512),
}
classifier_init = nn.initializers.normal(0.01)  # torchvision's Linear init (the ImageNet head)


def vgg_max_pool(x: jax.Array) -> jax.Array:
  """VGG's 2x2 pool: ``max_pool_2x2`` on CPU, ``nn.max_pool`` elsewhere (equal in value and every derivative).

  On XLA:CPU ``nn.max_pool``'s derivative is a ``reduce-window`` carrying four ``s32`` index arrays the size of the
  pool's input; ``max_pool_2x2`` holds none, in the same time (``benchmarks/memory.py``, ``benchmarks/pooling_ab.py``).
  Other platforms keep ``nn.max_pool``.
  """
  return max_pool_2x2(x) if jax.default_backend() == 'cpu' else nn.max_pool(x, (2, 2), (2, 2))


def _pool_matrix(size_in: int, size_out: int) -> np.ndarray:
  """Row i averages torch's adaptive window ``[floor(i * n / m), ceil((i + 1) * n / m))``."""
  matrix = np.zeros((size_out, size_in), np.float32)
  for i in range(size_out):
    start, end = (i * size_in) // size_out, -(-((i + 1) * size_in) // size_out)
    matrix[i, start:end] = 1.0 / (end - start)
  return matrix


def adaptive_avg_pool(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """torch's ``AdaptiveAvgPool2d(size)`` on NHWC for any input size, as two small averaging matrices."""
  rows, cols = (jnp.asarray(_pool_matrix(n, m), x.dtype) for n, m in zip(x.shape[1:3], size))
  return jnp.einsum('ih,jw,nhwc->nijc', rows, cols, x)


class VGG(nn.Module):
  """VGG-`depth`. ``imagenet_head``: 7x7 average pool and three Dense layers with dropout; else GAP + Dense."""
  depth: int = 16
  num_classes: int = 10
  imagenet_head: bool = False
  dropout_rate: float = 0.5
  width: float = 1.0  # channel multiplier (tests use narrow VGGs)
  widths: tuple[int, ...] | None = None  # channels of each conv; overrides `width`
  hidden: tuple[int, int] = (4096, 4096)  # the ImageNet head's hidden Dense layers
  conv_general_dilated: Callable[..., Any] | None = None
  max_pool: Callable[[jax.Array], jax.Array] = vgg_max_pool  # 2x2, stride 2

  def conv_widths(self) -> tuple[int, ...]:
    """Channels of every conv, in order."""
    default = tuple(max(1, int(layer * self.width)) for layer in STACKS[self.depth] if layer != 'M')
    if self.widths is not None and len(self.widths) != len(default):
      raise ValueError(f'VGG-{self.depth} has {len(default)} convs, got {len(self.widths)} widths')
    return default if self.widths is None else tuple(self.widths)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    widths = iter(self.conv_widths())
    for layer in STACKS[self.depth]:
      if layer == 'M':
        x = self.max_pool(x)
        continue
      x = nn.Conv(next(widths), (3, 3), padding=1, kernel_init=he_normal_fan_out,
                  conv_general_dilated=self.conv_general_dilated)(x)
      x = nn.relu(batch_norm(train)(x))
    if not self.imagenet_head:
      return torch_dense(self.num_classes, x.shape[-1])(x.mean(axis=(1, 2)))
    x = adaptive_avg_pool(x, (7, 7)).reshape(x.shape[0], -1)
    for features in self.hidden:
      x = nn.relu(nn.Dense(features, kernel_init=classifier_init)(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, kernel_init=classifier_init)(x)

