"""The model zoo: flax.linen modules by name, ``get_model('vgg16', num_classes=10)``."""

from __future__ import annotations

import dataclasses
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
from prospr_jax.xla_cpu import conv_impl as conv_impl_lib

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


def has_convolutions(model: nn.Module) -> bool:
  """Whether ``model`` takes a convolution implementation (an MLP carries no such field)."""
  return 'conv_general_dilated' in {field.name for field in dataclasses.fields(model)}


def with_conv_impl(model: nn.Module, conv_impl: str) -> nn.Module:
  """``model`` running its convolutions with ``conv_impl`` (``'auto'``, ``'im2col:64'``, ...; ``xla_cpu/conv_impl.py``);
  a model without any as is."""
  if not has_convolutions(model):
    return model
  return model.clone(conv_general_dilated=conv_impl_lib.resolve_conv_impl(conv_impl))


def build_model(name: str, num_classes: int, model_kwargs: dict[str, Any], conv_impl: str = 'auto') -> nn.Module:
  """The zoo model ``name`` as an experiment runs it: ``model_kwargs`` to its constructor, ``conv_impl`` for its
  convolutions. The one constructor of the experiment and the sweep."""
  return with_conv_impl(get_model(name, num_classes, **model_kwargs), conv_impl)


@functools.lru_cache(maxsize=32)
def _jitted_init(model: nn.Module):
  return jax.jit(functools.partial(model.init, train=False))  # once per model (modules hash by value)


def init_variables(model: nn.Module, input_shape: tuple[int, ...], key: jax.Array) -> ArrayTree:
  """The model's variables (params, BatchNorm statistics) for inputs of ``input_shape``, drawn from ``key``."""
  return _jitted_init(model)(key, jnp.zeros((1, *input_shape), jnp.float32))
