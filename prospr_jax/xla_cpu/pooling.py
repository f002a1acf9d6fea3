"""A 2x2 max-pool with torch's semantics and cheap, exact derivatives of every order on CPU.

``nn.max_pool`` differentiates through ``select_and_scatter``, which XLA:CPU runs
several times slower than slices and products. A plain ``reshape(...).max()`` is
fast too but its second derivative came out wrong (ProsPr's meta-gradient on
VGG-11 disagreed with finite differences): its derivative marks the maximum by
``operand == max``, two values XLA may compute separately; the one-hot here is
computed once, from one array. Measurements: benchmarks/README.md (``pooling_ab.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """``nn.MaxPool2d(2)`` on NHWC: 2x2 windows, stride 2, an odd last row or column dropped.

  A reshape and one transpose lay each window's four entries side by side; the maximum is picked by a one-hot of
  their argmax (first wins on ties), so every derivative is a transpose or a product with that fixed one-hot.
  """
  n, h, w, c = x.shape[0], x.shape[1] // 2, x.shape[2] // 2, x.shape[3]
  windows = x[:, :2 * h, :2 * w].reshape(n, h, 2, w, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(n, h, w, c, 4)
  choice = jax.nn.one_hot(jnp.argmax(windows, axis=-1), 4, dtype=x.dtype)
  return jnp.sum(windows * choice, axis=-1)
