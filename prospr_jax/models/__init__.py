"""The model zoo: flax.linen modules by name, ``get_model('vgg16', num_classes=10)``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from chex import ArrayTree

from prospr_jax.models.lenet import LeNet5, LeNet300100
from prospr_jax.models.resnet import BasicBlock, Bottleneck, ResNet, ResNet20
from prospr_jax.models.small_cnn import SmallCNN
from prospr_jax.models.vgg import VGG

MODELS: dict[str, Callable[..., nn.Module]] = {
    'small_cnn': SmallCNN,
    'lenet300_100': LeNet300100,
    'lenet5': LeNet5,
    'vgg11': functools.partial(VGG, depth=11),
    'vgg13': functools.partial(VGG, depth=13),
    'vgg16': functools.partial(VGG, depth=16),
    'vgg19': functools.partial(VGG, depth=19),
    'resnet20': ResNet20,
    'resnet18': functools.partial(ResNet, block=BasicBlock, stage_sizes=(2, 2, 2, 2)),
    'resnet34': functools.partial(ResNet, block=BasicBlock, stage_sizes=(3, 4, 6, 3)),
    'resnet50': functools.partial(ResNet, block=Bottleneck, stage_sizes=(3, 4, 6, 3)),
}


def get_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
  """The model registered as ``name``; ``kwargs`` go to its constructor (e.g. ``small_input=True``)."""
  if name not in MODELS:
    raise ValueError(f'unknown model {name!r}; valid names: {", ".join(sorted(MODELS))}')
  return MODELS[name](num_classes=num_classes, **kwargs)


@functools.lru_cache(maxsize=32)
def _jitted_init(model: nn.Module):
  return jax.jit(functools.partial(model.init, train=False))  # once per model (modules hash by value)


def init_variables(model: nn.Module, input_shape: tuple[int, ...], key: jax.Array) -> ArrayTree:
  """The model's variables (params, BatchNorm statistics) for inputs of ``input_shape``, drawn from ``key``."""
  return _jitted_init(model)(key, jnp.zeros((1, *input_shape), jnp.float32))
