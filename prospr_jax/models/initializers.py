"""Initialisers of the authors' PyTorch models, so a pruned network starts where theirs does.

PyTorch's default for ``nn.Conv2d`` and ``nn.Linear`` is ``kaiming_uniform_(a=sqrt(5))``:
U(+-1/sqrt(fan_in)), variance 1/(3 fan_in), with the bias U(+-1/sqrt(fan_in)) too.
Flax's ``variance_scaling`` computes fan-in as PyTorch does (kh * kw * C_in for an
HWIO kernel, C_in for a Dense kernel).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

he_normal_fan_in = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')    # kaiming_normal_()
he_normal_fan_out = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')  # kaiming_normal_(mode='fan_out')
torch_default_kernel = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')  # kaiming_uniform_(a=sqrt(5))


def torch_default_bias(fan_in: int):
  """PyTorch's default bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with the layer's fan-in."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_dense(features: int, fan_in: int) -> nn.Dense:
  """``nn.Linear(fan_in, features)`` with PyTorch's default kernel and bias init."""
  return nn.Dense(features, kernel_init=torch_default_kernel, bias_init=torch_default_bias(fan_in))
