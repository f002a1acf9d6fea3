"""ResNets: ResNet-20 for CIFAR (option-A shortcuts) and torchvision's ResNet-18/34/50.

``small_input`` is the CIFAR patch of the paper (appendix A.1): a 3x3 stride-1
stem and no max-pool. ResNet-20 convs are He normal fan-in (Frankle et al.'s
open_lth); torchvision ResNets are He normal fan-out with PyTorch's default
Dense init.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from prospr_jax.models.initializers import he_normal_fan_in, he_normal_fan_out, torch_default_bias, torch_default_kernel


def _norm(train: bool, **kwargs) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, **kwargs)


class OptionABlock(nn.Module):
  """Basic block whose shortcut subsamples and zero-pads channels: no parameters (He et al. 2016, option A)."""
  features: int
  stride: int
  conv_general_dilated: Callable[..., Any] | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = lambda s: nn.Conv(self.features, (3, 3), strides=s, padding=1, use_bias=False,
                             kernel_init=he_normal_fan_in, conv_general_dilated=self.conv_general_dilated)
    y = nn.relu(_norm(train)(conv(self.stride)(x)))
    y = _norm(train)(conv(1)(y))
    if self.stride != 1 or x.shape[-1] != self.features:
      x = x[:, ::self.stride, ::self.stride, :]
      pad = self.features - x.shape[-1]
      x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (pad // 2, pad - pad // 2)))
    return nn.relu(x + y)


class ResNet20(nn.Module):
  """ResNet-20 for 32x32 inputs: 3 stages of 3 option-A blocks, 16/32/64 channels; 269,722 params."""
  num_classes: int = 10
  width: int = 16
  conv_general_dilated: Callable[..., Any] | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    x = nn.Conv(self.width, (3, 3), padding=1, use_bias=False, kernel_init=he_normal_fan_in,
                conv_general_dilated=self.conv_general_dilated)(x)
    x = nn.relu(_norm(train)(x))
    for stage in range(3):
      for block in range(3):
        stride = 2 if stage > 0 and block == 0 else 1
        x = OptionABlock(self.width * 2**stage, stride, self.conv_general_dilated)(x, train)
    x = x.mean(axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=he_normal_fan_in,
                    bias_init=torch_default_bias(x.shape[-1]))(x)


class BasicBlock(nn.Module):
  features: int
  stride: int
  conv_general_dilated: Callable[..., Any] | None = None
  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = _torchvision_conv(self.conv_general_dilated)
    y = nn.relu(_norm(train)(conv(self.features, 3, self.stride)(x)))
    y = _norm(train)(conv(self.features, 3, 1)(y))
    return nn.relu(_shortcut(x, self.features, self.stride, train, conv) + y)


class Bottleneck(nn.Module):
  """torchvision's ResNet v1.5 bottleneck: the stride sits on the 3x3 conv."""
  features: int
  stride: int
  conv_general_dilated: Callable[..., Any] | None = None
  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = _torchvision_conv(self.conv_general_dilated)
    y = nn.relu(_norm(train)(conv(self.features, 1, 1)(x)))
    y = nn.relu(_norm(train)(conv(self.features, 3, self.stride)(y)))
    y = _norm(train)(conv(self.features * 4, 1, 1)(y))
    return nn.relu(_shortcut(x, self.features * 4, self.stride, train, conv) + y)


def _torchvision_conv(conv_general_dilated):
  def conv(features: int, size: int, stride: int) -> nn.Conv:
    return nn.Conv(features, (size, size), strides=stride, padding=size // 2, use_bias=False,
                   kernel_init=he_normal_fan_out, conv_general_dilated=conv_general_dilated)
  return conv


def _shortcut(x, features, stride, train, conv):
  if stride == 1 and x.shape[-1] == features:
    return x
  return _norm(train)(conv(features, 1, stride)(x))


class ResNet(nn.Module):
  """torchvision's ResNet; ``small_input`` swaps the 7x7/2 stem and max-pool for one 3x3/1 conv."""
  block: type[nn.Module]
  stage_sizes: Sequence[int]
  num_classes: int = 1000
  small_input: bool = False
  conv_general_dilated: Callable[..., Any] | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    if self.small_input:
      x = _torchvision_conv(self.conv_general_dilated)(64, 3, 1)(x)
    else:
      x = nn.Conv(64, (7, 7), strides=2, padding=3, use_bias=False, kernel_init=he_normal_fan_out,
                  conv_general_dilated=self.conv_general_dilated)(x)
    x = nn.relu(_norm(train)(x))
    if not self.small_input:
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for stage, blocks in enumerate(self.stage_sizes):
      for block in range(blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        x = self.block(64 * 2**stage, stride, self.conv_general_dilated)(x, train)
    x = x.mean(axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=torch_default_kernel,
                    bias_init=torch_default_bias(x.shape[-1]))(x)
