"""Winograd's minimal filtering F(2x2, 3x3): a 3x3 stride-1 convolution with 2.25x fewer multiplications.

Lavin & Gray (2016), "Fast Algorithms for Convolutional Neural Networks", eq. (8): each 2x2 output tile is

    Y = A^T [ (G g G^T) * (B^T d B) ] A

for the tile's 4x4 input patch ``d`` and the 3x3 kernel ``g``, with ``*`` elementwise (over the 16 positions of
the 4x4 Winograd domain; across channels it is a matmul). So a layer is 16 strided slices of the input (the
patches), one product with the constant 16x16 matrix ``B^T (x) B^T`` (Kronecker), 16 matmuls of
``(tiles, cin) @ (cin, cout)`` against the transformed kernel, and one product with the 4x16 ``A^T (x) A^T``: 16
multiplications per 2x2 tile and channel pair instead of 36. Every step is linear, and autodiff turns each
into its transpose, so derivatives of every order are again slices, pads, adds and matmuls: XLA:CPU runs them
fast inside loop bodies and second-order passes, as it does im2col's (``conv.py``). Exact in real arithmetic;
in float64 it equals ``lax.conv`` to rounding (tests); in float32 its rounding error is a few times that of a
direct convolution.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Pads = tuple[tuple[int, int], tuple[int, int]]

# F(m x m, 3x3): (B^T, G, A^T) for output tiles of m = 2 (exact in binary arithmetic) and m = 4 (Lavin & Gray's
# points 0, +-1, +-2: 4x fewer multiplications than a direct convolution, but a larger rounding error in float32).
MATRICES = {
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]),
        np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]])),
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                  [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                  [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]])),
}


def _transform(matrix: np.ndarray, x: jax.Array) -> jax.Array:
  """``kron(matrix, matrix)`` applied to the leading axis of ``x``, whose length is ``matrix``'s columns squared."""
  kron = jnp.asarray(np.kron(matrix, matrix), x.dtype)
  return (kron @ x.reshape(kron.shape[1], -1)).reshape(kron.shape[0], *x.shape[1:])


def _tiles(x: jax.Array, b_t: np.ndarray, m: int, tiles_hw: tuple[int, int]) -> jax.Array:
  """``B^T d B`` of every (m + 2)-square patch (stride m) of the padded input: ``((m + 2)^2, n * th * tw, cin)``."""
  th, tw = tiles_hw
  patches = jnp.stack([x[:, i:i + m * th:m, j:j + m * tw:m] for i in range(m + 2) for j in range(m + 2)])
  return _transform(b_t, patches).reshape((m + 2) ** 2, -1, x.shape[-1])


def winograd_conv(x: jax.Array, w: jax.Array, strides: tuple[int, int], pads: Pads, tile: int = 2) -> jax.Array:
  """NHWC input, HWIO 3x3 kernel, stride 1, explicit ``pads``: the convolution by F(tile x tile, 3x3)."""
  if w.shape[:2] != (3, 3) or tuple(strides) != (1, 1):
    raise ValueError(f'winograd_conv is for 3x3 kernels at stride 1, got kernel {w.shape[:2]} and strides {strides}')
  b_t, g, a_t = MATRICES[tile]
  n, h, wd, _ = x.shape
  cout = w.shape[-1]
  ho, wo = h + sum(pads[0]) - 2, wd + sum(pads[1]) - 2
  th, tw = -(-ho // tile), -(-wo // tile)  # a partial last tile gets zero rows / columns, cut off below
  x = jnp.pad(x, ((0, 0), (pads[0][0], pads[0][1] + tile * th - ho), (pads[1][0], pads[1][1] + tile * tw - wo),
                  (0, 0)))
  u = _transform(g, w.reshape(9, *w.shape[2:]))  # G g G^T for every (cin, cout)
  m = jnp.einsum('pkc,pco->pko', _tiles(x, b_t, tile, (th, tw)), u)  # the (tile + 2)^2 matmuls
  y = _transform(a_t, m).reshape(tile, tile, n, th, tw, cout)  # (row in tile, column in tile, n, th, tw, cout)
  return y.transpose(2, 3, 0, 4, 1, 5).reshape(n, tile * th, tile * tw, cout)[:, :ho, :wo]
