"""Convolution implementations for every model's ``nn.Conv(conv_general_dilated=...)``.

On XLA:CPU a convolution is fast only in plain NHWC/HWIO form without window
reversal, and only outside loop bodies; JAX's own backward convolutions are in
other forms, so meta-gradients (second order, inside a ``lax.scan``) crawl. Two
fixes, both exact:

- ``canonical``: a closed family of three convolutions, forward ``F(x, w)``,
  input-gradient ``D(g, w)`` and weight-gradient ``W(x, g)``, each a plain
  NHWC/HWIO convolution and a ``jax.custom_vjp`` whose backward is written with
  the other two, so derivatives of every order contain only canonical ones.
- ``im2col``: pad, ``kh * kw`` strided slices, concatenate, one matmul: all
  derivatives are pads, slices and matmuls.

``auto`` resolves before tracing: plain ``lax`` off-CPU; on CPU, per layer,
``canonical`` for stride-1 layers with 5-63 input channels, Winograd F(2x2, 3x3)
(``winograd.py``: 2.25x fewer multiplications, all derivatives matmuls too) for
wide 3x3 stride-1 layers with enough output tiles, and ``im2col`` for the rest
(``benchmarks/conv_impl.py`` and ``benchmarks/saliency.py`` measure why).

im2col's columns are ``kh * kw`` times the layer's input (576 MiB for VGG-16's
32x32x64 layer at batch 256) and autodiff keeps them for the backward pass;
Winograd keeps its tiles (4x the input). ``column_mib`` trades time for memory:
``lean_im2col`` and ``lean_winograd`` loop over batch chunks, hold at most that
many MiB of columns (or tiles) at a time and rebuild them in the backward pass
(``benchmarks/memory.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from prospr_jax.models.winograd import winograd_conv

ConvFn = Callable[..., jax.Array]
NHWC = ('NHWC', 'HWIO', 'NHWC')
IM2COL_MIN_CHANNELS = 64
WINOGRAD_MIN_CHANNELS = 64
WINOGRAD_MIN_TILES = 64
# The Winograd output tiles auto may take, largest first. F(4x4, 3x3) (4) would make VGG-16's layers 0.6-0.75x
# F(2x2, 3x3)'s time, but its float32 rounding moves ProsPr's masks (VGG-16, M = 1: 93% of the kept weights shared
# with float64's, against 99.2% with F(2x2) and 99.8% with im2col; README, Performance): not by default.
WINOGRAD_TILES = (2,)
Pads = tuple[tuple[int, int], tuple[int, int]]


def _conv(x, w, pads):
  return lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=NHWC)


def _dilate(x, strides):
  """Insert ``stride - 1`` zeros between spatial entries (interior padding): stride without lhs dilation."""
  if strides == (1, 1):
    return x
  zero = jnp.zeros((), x.dtype)
  return lax.pad(x, zero, ((0, 0, 0), (0, 0, strides[0] - 1), (0, 0, strides[1] - 1), (0, 0, 0)))


def _forward(x, w, strides, pads):
  """F: ``y = conv(x, w)`` with the given strides and explicit padding."""
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=NHWC)


def _input_grad(g, w, strides, pads, x_hw):
  """D: the transpose of F in ``x``: a stride-1 conv of the dilated ``g`` with the flipped, in/out-swapped kernel."""
  kernel = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
  tpads = tuple((k - 1 - lo, n + lo - (m - 1) * s - 1) for k, (lo, _), n, m, s in
                zip(w.shape[:2], pads, x_hw, g.shape[1:3], strides))
  return _conv(_dilate(g, strides), kernel, tpads)


def _weight_grad(x, g, strides, pads, k_hw):
  """W: the transpose of F in ``w``: channels become the batch, the batch becomes the features."""
  out = _conv(x.transpose(3, 1, 2, 0), _dilate(g, strides).transpose(1, 2, 0, 3), pads)  # (I, kh', kw', O)
  return out[:, :k_hw[0], :k_hw[1], :].transpose(1, 2, 0, 3)


def _after(x, cotangent):
  """``x`` itself, computed after ``cotangent`` exists: ``x + 0 * cotangent[0]`` (exact for a finite cotangent).

  A backward pass that rebuilds im2col columns from ``x`` must not look like the forward's: XLA:CPU would merge the
  two (CSE) or schedule the rebuild early, keeping every layer's columns alive from forward to backward. Its
  optimization barriers are expanded before CSE and scheduling, so ``jax.checkpoint`` cannot stop this on CPU; a
  data dependency on the cotangent does.
  """
  return x + (cotangent.ravel()[0] * 0).astype(x.dtype)


def _family(forward, input_grad, weight_grad, name: str, recompute_after_cotangent: bool):
  """``F(x, w)``, ``D(g, w)`` and ``W(x, g)`` as ``jax.custom_vjp``s whose backward passes are written with the other
  two, so derivatives of every order contain only these three, each keeping only its two inputs as residuals.
  ``recompute_after_cotangent``: the backward passes recompute large intermediates of ``x`` (see ``_after``)."""
  tie = _after if recompute_after_cotangent else (lambda x, cotangent: x)

  @functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
  def f(x, w, strides, pads):
    return forward(x, w, strides, pads)

  @functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
  def d(g, w, strides, pads, x_hw):
    return input_grad(g, w, strides, pads, x_hw)

  @functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
  def wg(x, g, strides, pads, k_hw):
    return weight_grad(x, g, strides, pads, k_hw)

  def f_bwd(strides, pads, res, c):
    x, w = res
    x = tie(x, c)
    return d(c, w, strides, pads, x.shape[1:3]), wg(x, c, strides, pads, w.shape[:2])

  def d_bwd(strides, pads, x_hw, res, c):
    g, w = res  # <c, D(g, w)> = <F(c, w), g>
    return f(c, w, strides, pads), wg(c, g, strides, pads, w.shape[:2])

  def w_bwd(strides, pads, k_hw, res, c):
    x, g = res  # <c, W(x, g)> = <F(x, c), g>
    x = tie(x, c)
    return d(g, c, strides, pads, x.shape[1:3]), f(x, c, strides, pads)

  f.defvjp(lambda x, w, strides, pads: (f(x, w, strides, pads), (x, w)), f_bwd)
  d.defvjp(lambda g, w, strides, pads, x_hw: (d(g, w, strides, pads, x_hw), (g, w)), d_bwd)
  wg.defvjp(lambda x, g, strides, pads, k_hw: (wg(x, g, strides, pads, k_hw), (x, g)), w_bwd)
  for fn, suffix in ((f, 'f'), (d, 'd'), (wg, 'w')):
    fn.__name__ = f'{name}_{suffix}'
  return f, d, wg


conv_f, conv_d, conv_w = _family(_forward, _input_grad, _weight_grad, 'conv', recompute_after_cotangent=False)


def _columns(x, k_hw, strides, pads):
  """im2col: the ``kh * kw`` shifted, strided views of the padded input side by side, ``(n, ho, wo, kh*kw*cin)``."""
  (kh, kw), (sh, sw) = k_hw, strides
  x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  ho, wo = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
  views = [x[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw, :] for i in range(kh) for j in range(kw)]
  return views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)


def im2col(x, w, strides, pads):
  """F as one matmul of the whole batch's columns with the flattened kernel; autodiff keeps the columns for the
  backward pass (fastest; the memory-lean form is ``lean_im2col``)."""
  kh, kw, cin, cout = w.shape
  columns = _columns(x, (kh, kw), strides, pads)
  return (columns.reshape(-1, kh * kw * cin) @ w.reshape(kh * kw * cin, cout)).reshape(*columns.shape[:3], cout)


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


def _out_hw(x_hw, k_hw, strides, pads) -> tuple[int, int]:
  return tuple((n + lo + hi - k) // s + 1 for n, k, s, (lo, hi) in zip(x_hw, k_hw, strides, pads))


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


def _is_plain(dimension_numbers, lhs_dilation, rhs_dilation, feature_group_count) -> bool:
  nhwc = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), NHWC)
  dims = (dimension_numbers if isinstance(dimension_numbers, lax.ConvDimensionNumbers)
          else lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), dimension_numbers or NHWC))
  ones = lambda d: d is None or all(v == 1 for v in d)
  return dims == nhwc and ones(lhs_dilation) and ones(rhs_dilation) and feature_group_count == 1


def _explicit_pads(lhs, rhs, strides, padding) -> Pads:
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding))
  return tuple(tuple(p) for p in padding)


def _make(kernel: Callable[[jax.Array, jax.Array, tuple[int, int], Pads], jax.Array], name: str) -> ConvFn:
  def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding, lhs_dilation=None, rhs_dilation=None,
                           dimension_numbers=None, feature_group_count: int = 1, precision=None, **kwargs: Any):
    if not _is_plain(dimension_numbers, lhs_dilation, rhs_dilation, feature_group_count) or lhs.ndim != 4:
      return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                      dimension_numbers, feature_group_count, precision=precision, **kwargs)
    strides = tuple(int(s) for s in window_strides)
    return kernel(lhs, rhs, strides, _explicit_pads(lhs, rhs, strides, padding))
  conv_general_dilated.__name__ = f'{name}_conv_general_dilated'
  return conv_general_dilated


canonical_conv = _make(conv_f, 'canonical')
im2col_conv = _make(im2col, 'im2col')


def _uses_im2col(rhs, strides) -> bool:
  """auto on CPU, per layer: canonical for stride-1 layers with 5-63 input channels, im2col for the rest.

  im2col wins where the matmul is wide (>= 64 input channels), on strided layers (the canonical weight-gradient
  of a strided conv is a convolution with a large, mostly zero kernel) and on the RGB stem.
  """
  return rhs.shape[2] >= IM2COL_MIN_CHANNELS or strides != (1, 1) or rhs.shape[2] <= 4


def _winograd_tile(lhs, rhs, strides, pads) -> int:
  """auto on CPU: the output tile of the Winograd algorithm for this layer (``winograd.py``), 0 for none.

  Winograd runs 3x3 stride-1 layers with >= 64 input channels (at 16-32 channels canonical is faster) and at least
  ``WINOGRAD_MIN_TILES`` output tiles (below that its fixed cost, the kernel's transform and its gradient's,
  outweighs the multiplications it saves; at batch 16 VGG-16's 2x2 layers tie). Of ``WINOGRAD_TILES`` it takes the
  largest that fits the output (a 2x2 tile on a 1x1 output would compute 4x the outputs) and has enough tiles
  (``python benchmarks/conv_impl.py --program=train_step --impls=canonical,im2col,winograd,winograd4``)."""
  if (rhs.shape[:2] != (3, 3) or strides != (1, 1) or rhs.shape[2] < WINOGRAD_MIN_CHANNELS
      or not all(0 <= p <= 2 for pair in pads for p in pair)):  # jnp.pad's widths, here and in its derivatives
    return 0
  ho, wo = _out_hw(lhs.shape[1:3], (3, 3), strides, pads)
  for tile in WINOGRAD_TILES:
    if min(ho, wo) >= tile and lhs.shape[0] * -(-ho // tile) * -(-wo // tile) >= WINOGRAD_MIN_TILES:
      return tile
  return 0


def _auto_cpu(im2col_kernel, winograd_kernel=winograd_conv):
  """auto's per-layer choice, with the given im2col and Winograd kernels (the lean setting passes lean ones)."""
  def kernel(lhs, rhs, strides, pads):
    tile = _winograd_tile(lhs, rhs, strides, pads)
    if tile:
      return winograd_kernel(lhs, rhs, strides, pads, tile)
    return (im2col_kernel if _uses_im2col(rhs, strides) else conv_f)(lhs, rhs, strides, pads)
  return kernel


auto_cpu_conv = _make(_auto_cpu(im2col), 'auto_cpu')
CONV_IMPLS = ('auto', 'lax', 'canonical', 'im2col')


def resolve_conv_impl(name: str, platform: str | None = None, column_mib: float | None = None) -> ConvFn | None:
  """The ``conv_general_dilated`` for ``name``; ``None`` means flax's default (plain ``lax``).

  ``column_mib``: im2col and Winograd layers (``im2col``, and ``auto`` on CPU) hold at most this many MiB of columns
  or tiles at a time and rebuild them in the backward pass (``lean_im2col``, ``lean_winograd``): less memory
  (README, Performance).
  """
  if name not in CONV_IMPLS:
    raise ValueError(f'unknown conv_impl {name!r}; valid names: {", ".join(CONV_IMPLS)}')
  if column_mib is not None and not column_mib > 0:
    raise ValueError(f'conv_column_mib must be a positive number of MiB or None (keep all columns and tiles), got {column_mib!r}')
  platform = platform or jax.default_backend()
  if name == 'lax' or (name == 'auto' and platform != 'cpu'):
    return None
  if name == 'canonical':
    return canonical_conv
  if column_mib is None:
    return im2col_conv if name == 'im2col' else auto_cpu_conv
  return _lean_conv(name, max(1, int(column_mib * 2**20)))


@functools.cache
def _lean_conv(name: str, column_bytes: int) -> ConvFn:
  """One function per setting, so models built twice compare equal and reuse compiled programs."""
  lean = lean_im2col(column_bytes)
  if name == 'im2col':
    return _make(lean, 'lean_im2col')
  return _make(_auto_cpu(lean, lambda x, w, strides, pads, tile: lean_winograd(column_bytes, tile)(x, w, strides, pads)),
               'lean_auto_cpu')


def resolve_conv_spec(spec: str, platform: str | None = None) -> ConvFn | None:
  """``resolve_conv_impl`` from ``'name'`` or ``'name:column_mib'`` (e.g. ``'auto:64'``), as the benchmarks take it."""
  name, _, column_mib = spec.partition(':')
  return resolve_conv_impl(name, platform, float(column_mib) if column_mib else None)
