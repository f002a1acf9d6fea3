"""The arithmetic a mask is scored in: float32, float64, or float32 with matmuls at full precision.

Exact ProsPr at M >= 2 on BatchNorm networks amplifies rounding: its float32
meta-gradient can differ from the float64 one by more than its own size, so the
mask depends on where it was computed (docs/numerics.md). ``'float64'`` scores
with 64-bit arithmetic (x64 scoped to the scoring: parameters and batches cast,
scores ranked in float64), reproducible on a CPU; ``'highest'`` keeps float32
but asks GPUs and TPUs for full-precision matmuls and convolutions (no TF32 or
bfloat16 passes; the CPU computes float32 at full precision anyway). Whatever
the parameters' dtype, scores are computed, normalised and ranked in float32 at
least: bfloat16 or float16 parameters are scored as their float32 upcast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
from chex import ArrayTree

PRECISIONS = ('float32', 'float64', 'highest')


def check_precision(precision: str, backend: str | None = None) -> str:
  """``precision`` if it is known and the backend can compute it; ValueError naming the fix otherwise."""
  if precision not in PRECISIONS:
    raise ValueError(f'precision={precision!r}: valid values are {", ".join(PRECISIONS)}')
  backend = backend or jax.default_backend()
  if precision == 'float64' and backend == 'tpu':
    raise ValueError("precision='float64' needs 64-bit floats, which TPUs do not have: use precision='highest'")
  return precision


@contextlib.contextmanager
def scoring(precision: str) -> Iterator[None]:
  """The context a mask is scored (and ranked) in: x64 for ``'float64'``, full-precision matmuls for ``'highest'``."""
  check_precision(precision)
  if precision == 'float64':
    with jax.enable_x64(True):
      yield
  elif precision == 'highest':
    with jax.default_matmul_precision('highest'):
      yield
  else:
    yield


def _cast(x: Any, dtype: Any) -> Any:
  if not hasattr(x, 'dtype') or not jnp.issubdtype(x.dtype, jnp.floating):
    return x
  return x if x.dtype == dtype or (dtype is None and jnp.finfo(x.dtype).bits >= 32) else jnp.asarray(
      x, dtype or jnp.float32)


def cast(tree: ArrayTree, precision: str = 'float32') -> ArrayTree:
  """Floating leaves in the precision's dtype: float64 for ``'float64'`` (inside ``scoring``), else at least
  float32 (bfloat16 and float16 upcast, float32 and float64 as they are). Other leaves unchanged."""
  if isinstance(tree, Iterator):  # a stream of batches (prospr_saliency_streamed): cast as read
    return (cast(batch, precision) for batch in tree)
  dtype = jnp.float64 if precision == 'float64' else None
  return jax.tree.map(lambda x: _cast(x, dtype), tree)
