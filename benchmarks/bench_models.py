"""Networks of the paper's sizes for benchmarks, until the model zoo lands (flax.linen, CIFAR shapes)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

he_normal_fan_in = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


class SmallCNN(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = True):
    for features, stride in ((16, 1), (32, 2)):
      x = nn.Conv(features, (3, 3), strides=stride, use_bias=False)(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    return nn.Dense(10)(x.mean(axis=(1, 2)))


class BasicBlock(nn.Module):
  features: int
  stride: int

  @nn.compact
  def __call__(self, x, train: bool):
    conv = lambda f, s: nn.Conv(f, (3, 3), strides=s, use_bias=False, kernel_init=he_normal_fan_in)
    norm = lambda: nn.BatchNorm(use_running_average=not train)
    y = nn.relu(norm()(conv(self.features, self.stride)(x)))
    y = norm()(conv(self.features, 1)(y))
    if self.stride != 1 or x.shape[-1] != self.features:  # option A: subsample, zero-pad channels
      x = x[:, ::self.stride, ::self.stride, :]
      pad = self.features - x.shape[-1]
      x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (pad // 2, pad - pad // 2)))
    return nn.relu(x + y)


class ResNet20(nn.Module):
  """ResNet-20 for CIFAR with parameter-free (option A) shortcuts: 269,722 parameters."""

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Conv(16, (3, 3), use_bias=False, kernel_init=he_normal_fan_in)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    for stage, features in enumerate((16, 32, 64)):
      for block in range(3):
        x = BasicBlock(features, 2 if stage > 0 and block == 0 else 1)(x, train)
    return nn.Dense(10)(x.mean(axis=(1, 2)))


VGG16_LAYERS = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M')


class VGG16(nn.Module):
  """VGG-16 for CIFAR: torchvision conv stack with BatchNorm, global average pool, one Dense: 14,728,266."""

  @nn.compact
  def __call__(self, x, train: bool = True):
    for layer in VGG16_LAYERS:
      if layer == 'M':
        x = nn.max_pool(x, (2, 2), (2, 2))
      else:
        x = nn.Conv(layer, (3, 3), kernel_init=nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'))(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    return nn.Dense(10)(x.mean(axis=(1, 2)))


MODELS = {'small_cnn': SmallCNN, 'resnet20': ResNet20, 'vgg16': VGG16}
