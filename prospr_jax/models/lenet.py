"""The LeNets of the pruning-at-initialisation papers on 28x28 images (SNIP, Lee et al. 2019).

Layouts and init follow the PyTorch SNIP reimplementations (mi-lad/snip
``train.py``, by one of ProsPr's authors): PyTorch's default init everywhere,
kernels and biases U(+-1/sqrt(fan_in)). No BatchNorm, no dropout. Both take any
image size (LeNet-5 needs at least 16x16); the counts below are for 28x28x1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

from prospr_jax.models.initializers import torch_default_bias, torch_default_kernel, torch_dense
from prospr_jax.xla_cpu.pooling import max_pool_2x2


class LeNet300100(nn.Module):
  """LeNet-300-100: an MLP 784-300-100-classes with ReLU; 266,610 params for 10 classes."""
  num_classes: int = 10
  widths: tuple[int, int] = (300, 100)  # hidden units (compaction narrows them)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for features in self.widths:
      x = nn.relu(torch_dense(features, x.shape[-1])(x))
    return torch_dense(self.num_classes, x.shape[-1])(x)


class LeNet5(nn.Module):
  """LeNet-5-Caffe: conv 5x5 20 - pool - conv 5x5 50 - pool - Dense 500 - Dense; 431,080 params for 10 classes.

  Valid convs (28 -> 24 -> 12 -> 8 -> 4), 2x2 max-pools, ReLU after each conv and the hidden Dense. Caffe's own
  prototxt has no ReLU after the convs; the PyTorch reimplementations that SNIP-style papers run add it.
  """
  num_classes: int = 10
  widths: tuple[int, int, int] = (20, 50, 500)  # the two convs' channels and the hidden Dense's units
  conv_general_dilated: Callable[..., Any] | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    for features in self.widths[:2]:
      fan_in = 5 * 5 * x.shape[-1]
      x = nn.Conv(features, (5, 5), padding='VALID', kernel_init=torch_default_kernel,
                  bias_init=torch_default_bias(fan_in), conv_general_dilated=self.conv_general_dilated)(x)
      x = max_pool_2x2(nn.relu(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(torch_dense(self.widths[2], x.shape[-1])(x))
    return torch_dense(self.num_classes, x.shape[-1])(x)
