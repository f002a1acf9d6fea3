"""The convolution a model runs with: ``conv_impl`` names parsed in one place, and ``auto``'s per-layer choice.

``auto`` resolves before tracing: plain ``lax`` off-CPU; on CPU, per layer,
``canonical`` for stride-1 layers with 5-63 input channels, Winograd F(2x2, 3x3)
for wide 3x3 stride-1 layers with enough output tiles, and ``im2col`` for the
rest (``benchmarks/conv_impl.py`` and ``benchmarks/saliency.py`` measure why).
``'<name>:<MiB>'`` bounds the im2col columns and Winograd tiles held at a time
(``lean.py``). ``parse_conv_impl`` is the one parser of the choice.
"""

from __future__ import annotations

import functools
import math

import jax

from prospr_jax.xla_cpu.conv import ConvFn, _make, _out_hw, canonical_conv, conv_f, im2col, im2col_conv
from prospr_jax.xla_cpu.lean import lean_im2col, lean_winograd
from prospr_jax.xla_cpu.winograd import winograd_conv

IM2COL_MIN_CHANNELS = 64

WINOGRAD_MIN_CHANNELS = 64

WINOGRAD_MIN_TILES = 64

# The Winograd output tiles auto may take, largest first. F(4x4, 3x3) (4) is faster than F(2x2, 3x3) but its float32
# rounding moves ProsPr's masks (docs/numerics.md, Winograd's rounding): not by default.
WINOGRAD_TILES = (2,)


def _uses_im2col(rhs, strides) -> bool:
  """auto on CPU, per layer: canonical for stride-1 layers with 5-63 input channels, im2col for the rest.

  im2col wins where the matmul is wide (>= 64 input channels), on strided layers (the canonical weight-gradient
  of a strided conv is a convolution with a large, mostly zero kernel) and on the RGB stem.
  """
  return rhs.shape[2] >= IM2COL_MIN_CHANNELS or strides != (1, 1) or rhs.shape[2] <= 4



def _winograd_tile(lhs, rhs, strides, pads) -> int:
  """auto on CPU: the output tile of the Winograd algorithm for this layer (``winograd.py``), 0 for none.

  Winograd runs 3x3 stride-1 layers with >= 64 input channels (below, canonical is faster) and at least
  ``WINOGRAD_MIN_TILES`` output tiles (below that its fixed cost, the kernel's transform and its gradient's,
  outweighs the multiplications it saves). Of ``WINOGRAD_TILES`` it takes the
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
BUDGETED = ('auto', 'im2col')  # take a budget: '<name>:<MiB>'


def parse_conv_impl(spec: str) -> tuple[str, float | None]:
  """``'auto'`` -> ``('auto', None)``, ``'auto:64'`` -> ``('auto', 64.0)``: the one parser of a ``conv_impl``.

  ``<name>:<MiB>``: im2col and Winograd layers (``im2col``, and ``auto`` on CPU) hold at most that many MiB of
  columns or tiles at a time and rebuild them in the backward pass (``lean.py``): less memory (docs/performance.md).
  """
  name, budgeted, mib = str(spec).partition(':')
  if name not in CONV_IMPLS:
    raise ValueError(f'unknown conv_impl {spec!r}; valid: {", ".join(CONV_IMPLS)}, or '
                     f'{" / ".join(n + ":<MiB>" for n in BUDGETED)} to bound the memory of columns and tiles')
  if not budgeted:
    return name, None
  try:
    column_mib = float(mib)
  except ValueError:
    column_mib = math.nan
  if name not in BUDGETED or not 0 < column_mib < math.inf:
    raise ValueError(f'conv_impl {spec!r}: the budget after ":" must be a positive number of MiB, and only '
                     f'{" and ".join(BUDGETED)} take one (e.g. {BUDGETED[0]}:64)')
  return name, column_mib


def resolve_conv_impl(spec: str, platform: str | None = None) -> ConvFn | None:
  """The ``conv_general_dilated`` for ``spec`` (``parse_conv_impl``); ``None`` means flax's default (plain ``lax``)."""
  name, column_mib = parse_conv_impl(spec)
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
