"""Pooling with torch's semantics and cheap, exact derivatives of every order on CPU.

``nn.max_pool`` differentiates through ``select_and_scatter``, which XLA:CPU runs
several times slower than slices and products (a LeNet-5 train step spent
almost half its time there). A plain ``reshape(...).max()`` is fast too but its
second derivative came out wrong: ProsPr's meta-gradient on VGG-11 disagreed
with finite differences and between conv implementations. Its derivative marks
the maximum by ``operand == max``, two values that XLA may compute separately
(our guess at the cause); the one-hot here is computed once, from one array.

Measured on 2 CPU cores: a LeNet-5 train step at batch 128 takes 20 ms with
``max_pool_2x2`` and 41 ms with ``nn.max_pool``, its exact ProsPr meta-gradient
(M = 3, batch 256) 0.70 s and 0.91 s. VGG uses it on CPU (``vgg_max_pool``). On a
half-width VGG-16 at batch 16 (``benchmarks/pooling_ab.py auto 16 0.5``, two runs)
its train step and exact meta-gradient take the time ``nn.max_pool`` takes and
first-order ProsPr 14-16% longer; an earlier version of this function (four
strided slices, stacked) once measured the exact one 1.7x slower there.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """``nn.MaxPool2d(2)`` on NHWC: 2x2 windows, stride 2, an odd last row or column dropped.

  A reshape and one transpose lay each window's four entries side by side; the maximum is picked by a one-hot of
  their argmax (first wins on ties), so every derivative is a transpose or a product with that fixed one-hot.
  """
  n, h, w, c = x.shape[0], x.shape[1] // 2, x.shape[2] // 2, x.shape[3]
  windows = x[:, :2 * h, :2 * w].reshape(n, h, 2, w, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(n, h, w, c, 4)
  choice = jax.nn.one_hot(jnp.argmax(windows, axis=-1), 4, dtype=x.dtype)
  return jnp.sum(windows * choice, axis=-1)


def vgg_max_pool(x: jax.Array) -> jax.Array:
  """VGG's 2x2 pool: ``max_pool_2x2`` on CPU, ``nn.max_pool`` elsewhere (equal in value and every derivative).

  On XLA:CPU ``nn.max_pool``'s derivative is a ``reduce-window`` carrying four ``s32`` index arrays the size of the
  pool's input: VGG-16's train step at batch 256 (``conv_column_mib=64``) holds 1.32 GiB of temporaries with it and
  0.84 GiB with ``max_pool_2x2`` (``benchmarks/memory.py``), in the same time (``benchmarks/pooling_ab.py``). Other
  platforms are not measured, so they keep ``nn.max_pool``.
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
