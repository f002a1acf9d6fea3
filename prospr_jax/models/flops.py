"""FLOPs counted from shapes: every convolution and Dense layer of a Flax model, whatever computes it.

Per example, a convolution costs ``2 * H_out * W_out * k_h * k_w * C_in * C_out / groups``
(2 FLOPs per multiply-add; the kernel's size is ``k_h * k_w * C_in / groups * C_out``)
and a Dense layer ``2 * in * out`` per output position. The shapes come from
the model's own forward pass (``jax.eval_shape``, nothing computed), so the count
is the same under every convolution implementation (``lax``, Winograd, im2col,
chunked) and on every backend; XLA's cost analysis counts what it compiled instead.
Normalisation, activations, pooling and additions are not counted.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from chex import ArrayTree

_PRODUCTS = (nn.Conv, nn.Dense)


def output_positions(model: nn.Module, variables: ArrayTree, input_shape: tuple[int, ...]) -> dict[str, float]:
  """Per kernel (``'Conv_0/kernel'``), the output positions per example of its layer: ``H_out * W_out`` of a
  convolution, 1 for a Dense layer on a vector (summed if a layer is called more than once)."""
  found: dict[str, float] = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, _PRODUCTS) and context.method_name == '__call__':
      name = '/'.join((*context.module.path, 'kernel'))
      found[name] = found.get(name, 0.0) + float(math.prod(jnp.shape(out)[1:-1]))
    return out

  images = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
  return found


def layer_flops(model: nn.Module, variables: ArrayTree, input_shape: tuple[int, ...]) -> dict[str, float]:
  """Per kernel, FLOPs per example of its layer: ``2 * output positions * kernel size``."""
  sizes = {'/'.join(str(getattr(k, 'key', k)) for k in path): math.prod(jnp.shape(leaf))
           for path, leaf in jax.tree_util.tree_leaves_with_path(variables['params'])}
  return {name: 2.0 * positions * sizes[name]
          for name, positions in output_positions(model, variables, input_shape).items()}


def forward_flops(model: nn.Module, variables: ArrayTree, input_shape: tuple[int, ...]) -> float:
  """FLOPs of one example's forward pass: the sum of ``layer_flops``."""
  return float(sum(layer_flops(model, variables, input_shape).values()))
