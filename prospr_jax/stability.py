"""Is the mask determined by the arithmetic? Score a second time, more exactly or on a nudged batch, and compare.

``config.prune.check_stability``: the second scoring runs in float64 on a CPU
(or GPU), with full-precision matmuls on a TPU, and, where the first already
used the most exact setting there is, on the same batches with every input
scaled by ``1 + 1e-6``. What it reports is the fraction of the kept weights
(or channels) both masks keep, per layer and in total.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from chex import ArrayTree

from prospr_jax import masks as masks_lib

PERTURBATION = 1e-6
WARN_BELOW = 0.9


@dataclasses.dataclass(frozen=True)
class SecondScoring:
  precision: str
  input_scale: float
  label: str  # what the second scoring differs in, as pruning.json records it


def second_scoring(precision: str, backend: str) -> SecondScoring:
  """The more exact scoring to compare a mask with: float64 where the backend has it, else 'highest', else the
  same precision on inputs scaled by ``1 + PERTURBATION``."""
  exact = 'highest' if backend == 'tpu' else 'float64'
  if precision != exact:
    return SecondScoring(exact, 1.0, exact)
  return SecondScoring(precision, 1.0 + PERTURBATION, f'{precision}, inputs x (1 + {PERTURBATION:g})')


def warning(second: SecondScoring, total: float) -> str | None:
  """One line when the second scoring keeps under ``WARN_BELOW`` of the mask's entries: what moved the mask (the
  arithmetic, or the inputs' sixth digit) and what a user can do about it; ``None`` otherwise."""
  if total >= WARN_BELOW:
    return None
  shared = f'scored again ({second.label}), it keeps only {100 * total:.1f}% of the same entries'
  if second.input_scale == 1.0:
    return (f'The mask is not determined by the arithmetic: {shared}. Score with config.prune.precision='
            f'{second.precision} for a reproducible mask (docs/numerics.md)')
  return (f'The mask is not determined by the inputs to their sixth digit: {shared}; no precision pins it, and '
          'a reproducible mask needs the same batches and arithmetic (docs/numerics.md)')


def kept_overlap(masks: ArrayTree, other: ArrayTree) -> dict[str, object]:
  """``{'total': shared / kept, 'layers': {name: shared / kept}}``: of the entries ``masks`` keeps, the fraction
  ``other`` keeps too (1.0 for a layer that keeps nothing)."""
  mine, theirs = dict(masks_lib.named_leaves(masks)), dict(masks_lib.named_leaves(other))
  layers, shared_total, kept_total = {}, 0, 0
  for name, m in mine.items():
    m, o = np.asarray(m, bool), np.asarray(theirs[name], bool)
    kept, shared = int(m.sum()), int((m & o).sum())
    layers[name] = shared / kept if kept else 1.0
    shared_total, kept_total = shared_total + shared, kept_total + kept
  return {'total': shared_total / kept_total if kept_total else 1.0, 'layers': layers}
