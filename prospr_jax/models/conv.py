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
``canonical`` for stride-1 layers with 5-63 input channels and ``im2col`` for the
rest (``benchmarks/conv_impl.py`` and ``benchmarks/saliency.py`` measure why).
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
IM2COL_MIN_CHANNELS = 64
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_f(x, w, strides, pads):
  return _forward(x, w, strides, pads)


def _f_fwd(x, w, strides, pads):
  return conv_f(x, w, strides, pads), (x, w)


def _f_bwd(strides, pads, res, c):
  x, w = res
  return conv_d(c, w, strides, pads, x.shape[1:3]), conv_w(x, c, strides, pads, w.shape[:2])


conv_f.defvjp(_f_fwd, _f_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_d(g, w, strides, pads, x_hw):
  return _input_grad(g, w, strides, pads, x_hw)


def _d_fwd(g, w, strides, pads, x_hw):
  return conv_d(g, w, strides, pads, x_hw), (g, w)


def _d_bwd(strides, pads, x_hw, res, c):
  g, w = res  # <c, D(g, w)> = <F(c, w), g>
  return conv_f(c, w, strides, pads), conv_w(c, g, strides, pads, w.shape[:2])


conv_d.defvjp(_d_fwd, _d_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_w(x, g, strides, pads, k_hw):
  return _weight_grad(x, g, strides, pads, k_hw)


def _w_fwd(x, g, strides, pads, k_hw):
  return conv_w(x, g, strides, pads, k_hw), (x, g)


def _w_bwd(strides, pads, k_hw, res, c):
  x, g = res  # <c, W(x, g)> = <F(x, c), g>
  return conv_d(g, c, strides, pads, x.shape[1:3]), conv_f(x, c, strides, pads)


conv_w.defvjp(_w_fwd, _w_bwd)


def im2col(x, w, strides, pads):
  """The convolution as one matmul over ``kh * kw`` shifted, strided views of the padded input."""
  kh, kw, cin, cout = w.shape
  x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  ho = (x.shape[1] - kh) // strides[0] + 1
  wo = (x.shape[2] - kw) // strides[1] + 1
  views = [x[:, i:i + (ho - 1) * strides[0] + 1:strides[0], j:j + (wo - 1) * strides[1] + 1:strides[1], :]
           for i in range(kh) for j in range(kw)]
  columns = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
  return (columns.reshape(-1, kh * kw * cin) @ w.reshape(kh * kw * cin, cout)).reshape(x.shape[0], ho, wo, cout)


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


def _auto_cpu(lhs, rhs, strides, pads):
  """Per layer: canonical for stride-1 layers with few input channels, im2col for the rest.

  im2col wins where the matmul is wide (>= 64 input channels), on strided layers (the canonical weight-gradient
  of a strided conv is a convolution with a large, mostly zero kernel) and on the RGB stem.
  """
  use_im2col = rhs.shape[2] >= IM2COL_MIN_CHANNELS or strides != (1, 1) or rhs.shape[2] <= 4
  return (im2col if use_im2col else conv_f)(lhs, rhs, strides, pads)


auto_cpu_conv = _make(_auto_cpu, 'auto_cpu')
CONV_IMPLS = ('auto', 'lax', 'canonical', 'im2col')


def resolve_conv_impl(name: str, platform: str | None = None) -> ConvFn | None:
  """The ``conv_general_dilated`` for ``name``; ``None`` means flax's default (plain ``lax``)."""
  if name not in CONV_IMPLS:
    raise ValueError(f'unknown conv_impl {name!r}; valid names: {", ".join(CONV_IMPLS)}')
  platform = platform or jax.default_backend()
  if name == 'auto':
    return auto_cpu_conv if platform == 'cpu' else None
  return {'lax': None, 'canonical': canonical_conv, 'im2col': im2col_conv}[name]
