"""ResNets: ResNet-20 for CIFAR (option-A shortcuts) and torchvision's ResNet-18/34/50 layout.

- ResNet-20 (the authors' ``models/resnet20.py``, Idelbayev's): convs and the
  Dense kernel He normal fan-in (``kaiming_normal_``), the Dense bias PyTorch's
  default U(+-1/sqrt(64)).
- ResNet-18/50 (the authors' ``models/resnet_custom.py``, torchvision's layout,
  v1.5 bottleneck; ResNet-34 built alike): their ``_initialize_weights`` is never called, so
  every conv keeps PyTorch's default init, U(+-1/sqrt(fan_in)), variance
  1/(3 fan_in): ``conv_init='torch_default'``, the default, as the authors use
  it for CIFAR, Tiny-ImageNet and ImageNet alike. ``conv_init='torchvision'`` gives
  torchvision's own: convs He normal fan-out. Either way the Dense keeps
  PyTorch's default Linear init (torchvision does not re-initialise it).
- ``small_input`` is the authors' patch for small images (appendix A.1): a 3x3
  stride-1 stem and no max-pool.

BatchNorm everywhere: scale 1, bias 0 (PyTorch's default and flax's).

Widths (what compaction, ``prospr_jax.models.compaction``, sets): ``stage_widths`` are
the residual streams' channels, ``block_widths`` each block's inner convs';
ResNet-20's ``shortcut_pads`` say how many zero channels its option-A shortcut
puts below and above the previous stream. Shortcut kinds (identity, projection,
zero-pad) follow the dense layout, never the widths, so a narrow net keeps them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from prospr_jax.models.batch_norm import batch_norm
from prospr_jax.models.initializers import (
  he_normal_fan_in,
  he_normal_fan_out,
  torch_default_bias,
  torch_default_kernel,
  torch_dense,
)


class OptionABlock(nn.Module):
  """Basic block whose shortcut subsamples and zero-pads channels: no parameters (He et al. 2016, option A)."""
  features: int
  stride: int
  conv_general_dilated: Callable[..., Any] | None = None
  inner: int | None = None  # the first conv's channels (default: features)
  pad: tuple[int, int] | None = None  # zero channels below / above the input (default: split evenly)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = lambda n, s: nn.Conv(n, (3, 3), strides=s, padding=1, use_bias=False,
                                kernel_init=he_normal_fan_in, conv_general_dilated=self.conv_general_dilated)
    y = nn.relu(batch_norm(train)(conv(self.inner or self.features, self.stride)(x)))
    y = batch_norm(train)(conv(self.features, 1)(y))
    if self.stride != 1 or x.shape[-1] != self.features:
      x = x[:, ::self.stride, ::self.stride, :]
      extra = self.features - x.shape[-1]
      low, high = self.pad or (extra // 2, extra - extra // 2)
      if low + high != extra:
        raise ValueError(f'shortcut pads {low} + {high} do not take {x.shape[-1]} channels to {self.features}')
      x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (low, high)))
    return nn.relu(x + y)


class ResNet20(nn.Module):
  """ResNet-20 for 32x32 inputs: 3 stages of 3 option-A blocks, 16/32/64 channels; 269,722 params."""
  num_classes: int = 10
  width: int = 16
  conv_general_dilated: Callable[..., Any] | None = None
  stage_widths: tuple[int, int, int] | None = None  # default: width, 2 width, 4 width
  block_widths: tuple[int, ...] | None = None  # the 9 blocks' first convs (default: their stage's width)
  shortcut_pads: tuple[tuple[int, int], tuple[int, int]] | None = None  # stages 2 and 3 (default: even split)

  def widths(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(stage_widths, block_widths)``, defaults filled in."""
    stages = tuple(self.stage_widths or (self.width, 2 * self.width, 4 * self.width))
    return stages, tuple(self.block_widths or (w for w in stages for _ in range(3)))

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    stages, inner = self.widths()
    x = nn.Conv(stages[0], (3, 3), padding=1, use_bias=False, kernel_init=he_normal_fan_in,
                conv_general_dilated=self.conv_general_dilated)(x)
    x = nn.relu(batch_norm(train)(x))
    for stage in range(3):
      for block in range(3):
        stride = 2 if stage > 0 and block == 0 else 1
        pad = self.shortcut_pads[stage - 1] if self.shortcut_pads and stage > 0 and block == 0 else None
        x = OptionABlock(stages[stage], stride, self.conv_general_dilated, inner[3 * stage + block], pad)(x, train)
    x = x.mean(axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=he_normal_fan_in,
                    bias_init=torch_default_bias(x.shape[-1]))(x)


class BasicBlock(nn.Module):
  """torchvision's basic block: two 3x3 convs; a 1x1 conv + BatchNorm shortcut where the shape changes."""
  features: int
  stride: int
  conv_general_dilated: Callable[..., Any] | None = None
  kernel_init: Callable[..., Any] = torch_default_kernel
  inner: tuple[int, ...] | None = None  # the first conv's channels (default: features)
  out_features: int | None = None  # the block's output channels (default: features)
  projection: bool | None = None  # a conv shortcut (default: where the shape changes)
  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = _conv_factory(self.kernel_init, self.conv_general_dilated)
    out = self.out_features or self.features
    y = nn.relu(batch_norm(train)(conv((self.inner or (self.features,))[0], 3, self.stride)(x)))
    y = batch_norm(train)(conv(out, 3, 1)(y))
    return nn.relu(_shortcut(x, out, self.stride, train, conv, self.projection) + y)


class Bottleneck(nn.Module):
  """torchvision's ResNet v1.5 bottleneck: the stride sits on the 3x3 conv."""
  features: int
  stride: int
  conv_general_dilated: Callable[..., Any] | None = None
  kernel_init: Callable[..., Any] = torch_default_kernel
  inner: tuple[int, ...] | None = None  # the 1x1 and 3x3 convs' channels (default: features, features)
  out_features: int | None = None  # the block's output channels (default: 4 features)
  projection: bool | None = None
  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = _conv_factory(self.kernel_init, self.conv_general_dilated)
    first, second = self.inner or (self.features, self.features)
    out = self.out_features or self.features * 4
    y = nn.relu(batch_norm(train)(conv(first, 1, 1)(x)))
    y = nn.relu(batch_norm(train)(conv(second, 3, self.stride)(y)))
    y = batch_norm(train)(conv(out, 1, 1)(y))
    return nn.relu(_shortcut(x, out, self.stride, train, conv, self.projection) + y)


def _conv_factory(kernel_init, conv_general_dilated):
  """``conv(features, size, stride)``: a bias-free square conv padded by ``size // 2``, as torchvision's."""
  def conv(features: int, size: int, stride: int) -> nn.Conv:
    return nn.Conv(features, (size, size), strides=stride, padding=size // 2, use_bias=False,
                   kernel_init=kernel_init, conv_general_dilated=conv_general_dilated)
  return conv


RESNET_INITS: dict[str, Callable[..., Any]] = {
    'torch_default': torch_default_kernel,  # the authors' code: their initialiser is never called
    'torchvision': he_normal_fan_out,       # torchvision.models.resnet: kaiming_normal_(mode='fan_out')
}


def resnet_conv_init(name: str) -> Callable[..., Any]:
  """The conv kernel initialiser named ``name``; an unknown name lists the valid ones."""
  if name not in RESNET_INITS:
    raise ValueError(f'unknown ResNet conv_init {name!r}; valid: {", ".join(RESNET_INITS)}')
  return RESNET_INITS[name]


def _shortcut(x, features, stride, train, conv, projection=None):
  if not (projection if projection is not None else stride != 1 or x.shape[-1] != features):
    return x
  return batch_norm(train)(conv(features, 1, stride)(x))


class ResNet(nn.Module):
  """torchvision's ResNet; ``small_input`` swaps the 7x7/2 stem and max-pool for one 3x3/1 conv.

  ``conv_init``: 'torch_default' (the authors' models: PyTorch's default conv init) or 'torchvision' (He fan-out).
  ``width``: the first stage's inner channels (torchvision: 64); the widths fields override it per layer.
  """
  block: type[nn.Module]
  stage_sizes: Sequence[int]
  num_classes: int = 1000
  small_input: bool = False
  conv_init: str = 'torch_default'  # not `init`: that is flax's Module.init
  conv_general_dilated: Callable[..., Any] | None = None
  width: int = 64
  stem_width: int | None = None  # bottleneck nets only; basic blocks add the stem to stage 1's stream
  stage_widths: tuple[int, ...] | None = None  # each stage's residual stream
  block_widths: tuple[tuple[int, ...], ...] | None = None  # each block's inner convs

  def widths(self) -> tuple[int, tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """``(stem, stage_widths, block_widths)``, defaults filled in."""
    expansion = self.block.expansion
    stages = tuple(self.stage_widths or (self.width * 2**s * expansion for s in range(len(self.stage_sizes))))
    inner = self.block_widths or tuple((self.width * 2**s,) * (1 if expansion == 1 else 2)
                                       for s, n in enumerate(self.stage_sizes) for _ in range(n))
    stem = stages[0] if expansion == 1 else (self.stem_width or self.width)
    return stem, stages, tuple(tuple(w) for w in inner)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    kernel_init = resnet_conv_init(self.conv_init)
    conv = _conv_factory(kernel_init, self.conv_general_dilated)
    stem, stages, inner = self.widths()
    x = conv(stem, 3, 1)(x) if self.small_input else conv(stem, 7, 2)(x)
    x = nn.relu(batch_norm(train)(x))
    if not self.small_input:
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    block = functools.partial(self.block, conv_general_dilated=self.conv_general_dilated, kernel_init=kernel_init)
    inner_widths = iter(inner)
    for stage, blocks in enumerate(self.stage_sizes):
      for index in range(blocks):
        stride = 2 if stage > 0 and index == 0 else 1
        projection = index == 0 and (stage > 0 or self.block.expansion != 1)  # the dense net's shape changes
        x = block(64 * 2**stage, stride, inner=next(inner_widths), out_features=stages[stage],
                  projection=projection)(x, train)
    x = x.mean(axis=(1, 2))
    return torch_dense(self.num_classes, x.shape[-1])(x)
