"""Exact convolutions that keep XLA:CPU's fast path, for ``nn.Conv(conv_general_dilated=...)``.

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

Winograd F(2x2, 3x3) is ``winograd.py``; the memory-lean variants are
``lean.py``; which one a layer gets (``auto``) and the ``conv_impl`` parser are
``conv_impl.py``. Measurements: benchmarks/README.md.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

ConvFn = Callable[..., jax.Array]

NHWC = ('NHWC', 'HWIO', 'NHWC')

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



def _out_hw(x_hw, k_hw, strides, pads) -> tuple[int, int]:
  return tuple((n + lo + hi - k) // s + 1 for n, k, s, (lo, hi) in zip(x_hw, k_hw, strides, pads))



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
