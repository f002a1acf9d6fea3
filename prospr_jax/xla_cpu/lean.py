"""Memory-lean im2col and Winograd: batch chunks of at most a given size of columns (or tiles), rebuilt in the
backward pass instead of kept (``conv_impl='im2col:<MiB>'`` or ``'auto:<MiB>'``).

im2col's columns are ``kh * kw`` times the layer's input and autodiff keeps
them for the backward pass; Winograd keeps its tiles (4x the input). These
trade time for memory (``benchmarks/memory.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from prospr_jax.xla_cpu.conv import Pads, _columns, _family, _out_hw
from prospr_jax.xla_cpu.winograd import winograd_conv


def _chunk_size(n: int, per_image_bytes: int, budget_bytes: int) -> int:
  """The largest divisor of the batch ``n`` whose chunk fits ``budget_bytes`` at ``per_image_bytes`` (at least 1)."""
  limit = max(1, budget_bytes // per_image_bytes)
  return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)



def _over_chunks(fn, chunk: int, *arrays, summed: bool = False):
  """``fn`` over batch chunks of ``arrays`` in a loop, so one chunk's intermediates are live at a time (unrolled,
  XLA fuses or schedules the chunks together and holds all of them): the results stacked, or ``summed``."""
  n = arrays[0].shape[0]
  if chunk == n:
    return fn(*arrays)
  chunks = tuple(a.reshape(n // chunk, chunk, *a.shape[1:]) for a in arrays)
  if not summed:
    return lax.map(lambda parts: fn(*parts), chunks)
  total = jax.eval_shape(fn, *(c[0] for c in chunks))
  return lax.scan(lambda acc, parts: (acc + fn(*parts), None), jnp.zeros(total.shape, total.dtype), chunks)[0]



@functools.cache
def lean_im2col(column_bytes: int) -> Callable[[jax.Array, jax.Array, tuple[int, int], Pads], jax.Array]:
  """im2col that holds at most ``column_bytes`` of columns at a time: a closed F/D/W family (as ``canonical``) whose
  ops loop over batch chunks and keep only their inputs, rebuilding columns in the backward pass."""

  def chunk_size(n, out_hw, k_hw, cin, itemsize):
    return _chunk_size(n, out_hw[0] * out_hw[1] * k_hw[0] * k_hw[1] * cin * itemsize, column_bytes)

  def forward(x, w, strides, pads):
    kh, kw, cin, cout = w.shape
    matrix = w.reshape(kh * kw * cin, cout)
    out_hw = _out_hw(x.shape[1:3], (kh, kw), strides, pads)
    chunk = chunk_size(x.shape[0], out_hw, (kh, kw), cin, x.dtype.itemsize)
    y = _over_chunks(lambda xc: _columns(xc, (kh, kw), strides, pads).reshape(-1, kh * kw * cin) @ matrix, chunk, x)
    return y.reshape(x.shape[0], *out_hw, cout)

  def input_grad(g, w, strides, pads, x_hw):  # g @ kernel^T, scattered back by col2im (the gather's transpose)
    kh, kw, cin, cout = w.shape
    matrix = w.reshape(kh * kw * cin, cout)
    chunk = chunk_size(g.shape[0], g.shape[1:3], (kh, kw), cin, g.dtype.itemsize)
    col2im = jax.linear_transpose(lambda x: _columns(x, (kh, kw), strides, pads),
                                  jax.ShapeDtypeStruct((chunk, *x_hw, cin), g.dtype))
    dx = _over_chunks(lambda gc: col2im((gc.reshape(-1, cout) @ matrix.T).reshape(*gc.shape[:3], kh * kw * cin))[0],
                      chunk, g)
    return dx.reshape(g.shape[0], *x_hw, cin)

  def weight_grad(x, g, strides, pads, k_hw):  # columns^T @ g, summed over chunks
    cin, cout = x.shape[3], g.shape[3]
    chunk = chunk_size(x.shape[0], g.shape[1:3], k_hw, cin, x.dtype.itemsize)
    part = lambda xc, gc: (_columns(xc, k_hw, strides, pads).reshape(-1, k_hw[0] * k_hw[1] * cin).T
                           @ gc.reshape(-1, cout))
    return _over_chunks(part, chunk, x, g, summed=True).reshape(*k_hw, cin, cout)

  return _family(forward, input_grad, weight_grad, f'lean_im2col_{column_bytes}', recompute_after_cotangent=True)[0]



@functools.cache
def lean_winograd(tile_bytes: int, tile: int = 2) -> Callable[[jax.Array, jax.Array, tuple[int, int], Pads], jax.Array]:
  """Winograd F(tile x tile, 3x3) (``winograd.py``) that holds at most ``tile_bytes`` of tiles at a time: a closed
  F/D/W family, as ``lean_im2col``, whose ops loop over batch chunks and keep only their inputs, rebuilding tiles in
  the backward pass. D is Winograd too (stride 1: the flipped, in/out-swapped kernel), W the transpose of F in ``w``
  (the tiles' products summed over chunks)."""

  def chunk_size(n, out_hw, channels, itemsize):
    """Batch chunk whose working set fits: an op holds its input's patches, their tiles and its output's tiles at
    once, at most 3x the wider side's tiles."""
    per_image = 3 * (tile + 2) ** 2 * -(-out_hw[0] // tile) * -(-out_hw[1] // tile) * channels * itemsize
    return _chunk_size(n, per_image, tile_bytes)

  def forward(x, w, strides, pads):
    out_hw = _out_hw(x.shape[1:3], w.shape[:2], strides, pads)
    chunk = chunk_size(x.shape[0], out_hw, max(w.shape[2:]), x.dtype.itemsize)
    y = _over_chunks(lambda xc: winograd_conv(xc, w, strides, pads, tile), chunk, x)
    return y.reshape(x.shape[0], *out_hw, w.shape[3])

  def input_grad(g, w, strides, pads, x_hw):
    tpads = tuple((2 - lo, n + lo - m) for (lo, _), n, m in zip(pads, x_hw, g.shape[1:3]))  # in 0..2 as pads are
    kernel = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
    chunk = chunk_size(g.shape[0], x_hw, max(w.shape[2:]), g.dtype.itemsize)
    dx = _over_chunks(lambda gc: winograd_conv(gc, kernel, strides, tpads, tile), chunk, g)
    return dx.reshape(g.shape[0], *x_hw, w.shape[2])

  def weight_grad(x, g, strides, pads, k_hw):
    kernel = jax.ShapeDtypeStruct((*k_hw, x.shape[3], g.shape[3]), x.dtype)
    chunk = chunk_size(x.shape[0], g.shape[1:3], max(x.shape[3], g.shape[3]), x.dtype.itemsize)
    part = lambda xc, gc: jax.linear_transpose(lambda w: winograd_conv(xc, w, strides, pads, tile), kernel)(gc)[0]
    return _over_chunks(part, chunk, x, g, summed=True)

  return _family(forward, input_grad, weight_grad, f'lean_winograd{tile}_{tile_bytes}', recompute_after_cotangent=True)[0]
