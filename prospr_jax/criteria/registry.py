"""Criteria by name, so a config can say ``criterion = 'prospr'``; each entry carries its own settings.

A ``Criterion`` record says what the harness needs to call a saliency function
without knowing it by name: which ``config.prune`` keys it takes, whether it
prunes in rounds (and how many by default: read off the function's signature),
which setting divides the logits, whether it reads data and a seed. Adding a
criterion is one file and one line here.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
from chex import ArrayTree

from prospr_jax import ablations
from prospr_jax.criteria import scores as scores_lib
from prospr_jax.criteria.force import force_saliency, iterative_snip_saliency
from prospr_jax.criteria.grasp import grasp_saliency
from prospr_jax.criteria.magnitude import magnitude_saliency
from prospr_jax.criteria.prospr import prospr_saliency
from prospr_jax.criteria.random import random_saliency
from prospr_jax.criteria.snip import snip_saliency
from prospr_jax.criteria.synflow import synflow_saliency
from prospr_jax.criteria.three_sp import three_sp_saliency

SaliencyFn = Callable[..., ArrayTree]


def first_batch_only(criterion: SaliencyFn) -> SaliencyFn:
  """The single-batch form of a multi-batch criterion: it sees ``batches[:1]``."""
  @functools.wraps(criterion)
  def wrapped(params, batches, **kwargs):
    return criterion(params, jax.tree.map(lambda x: x[:1], batches), **kwargs)
  return wrapped


@dataclasses.dataclass(frozen=True)
class Criterion:
  """A saliency function and what calling it from a config takes.

  ``settings``: the ``config.prune`` keys passed through as keywords of the same
  name. ``temperature_setting``: the ``config.prune`` key that divides the
  logits of its loss (GraSP's 200), if any. ``needs_data``: False for data-free
  criteria (one batch is read for its shapes). ``seeded``: takes ``rng=``.
  ``needs_apply_fn``: takes the model's eval-mode ``apply_fn`` (SynFlow).
  ``batches_per_round``: takes ``round_batches(r)``, fresh batches for every round
  (FORCE and Iter SNIP, as the authors' code draws them). ``channel_costs``: takes
  each mask entry's FLOPs (3SP). ``initialization``: how the pruned network starts,
  ``'keep'`` its initial weights, ``'reinit'`` or ``'rescale'`` (``prospr_jax/initialization.py``).
  ``structured_only``: a method of channels (3SP): a config must set ``prune.structured``
  (``validation.py``), and sweeps over every criterion of unstructured pruning leave it out (``UNSTRUCTURED``).
  """
  fn: SaliencyFn
  settings: tuple[str, ...] = ()
  temperature_setting: str | None = None
  needs_data: bool = True
  seeded: bool = False
  needs_apply_fn: bool = False
  batches_per_round: bool = False
  channel_costs: bool = False
  initialization: str = 'keep'
  structured_only: bool = False

  @property
  def channel_gate(self) -> str:
    """Where its mask sits when it scores channels (``scores.channel_gate``): ``'output'`` or ``'kernel'``."""
    return scores_lib.gate_of(self.fn)

  @property
  def default_rounds(self) -> int | None:
    """Rounds of an iterative criterion (its function's default), ``None`` for one-shot criteria."""
    parameter = inspect.signature(self.fn).parameters.get('rounds')
    return None if parameter is None else parameter.default

  @property
  def prunes_in_rounds(self) -> bool:
    """Iterative criteria take ``sparsity``, ``rounds``, ``mask_fn`` and ``invert`` and rank by the result."""
    return self.default_rounds is not None

  def __call__(self, params: ArrayTree, batches: ArrayTree, *, invert: bool = False, **kwargs: Any) -> ArrayTree:
    """Scores, higher = keep; ``invert`` ranks the other way (every round for iterative criteria)."""
    if self.prunes_in_rounds:
      return self.fn(params, batches, invert=invert, **kwargs)
    scores = self.fn(params, batches, **kwargs)
    return ablations.invert_scores(scores) if invert else scores


CRITERIA: dict[str, Criterion] = {
    'prospr': Criterion(prospr_saliency, settings=('inner_lr', 'inner_momentum', 'first_order')),
    'snip': Criterion(first_batch_only(snip_saliency)),
    'snip_mb': Criterion(snip_saliency),
    'grasp': Criterion(first_batch_only(grasp_saliency), temperature_setting='grasp_temperature'),
    'grasp_mb': Criterion(grasp_saliency, temperature_setting='grasp_temperature'),
    'synflow': Criterion(synflow_saliency, needs_data=False, needs_apply_fn=True),
    'iterative_snip': Criterion(iterative_snip_saliency, batches_per_round=True),
    'force': Criterion(force_saliency, batches_per_round=True),
    'magnitude': Criterion(magnitude_saliency, needs_data=False),
    'random': Criterion(random_saliency, needs_data=False, seeded=True),
    'three_sp': Criterion(first_batch_only(three_sp_saliency), channel_costs=True, structured_only=True),
    'three_sp_reinit': Criterion(first_batch_only(three_sp_saliency), channel_costs=True, initialization='reinit',
                                 structured_only=True),
    'three_sp_rescale': Criterion(first_batch_only(three_sp_saliency), channel_costs=True, initialization='rescale',
                                  structured_only=True),
}
ITERATIVE = frozenset(name for name, criterion in CRITERIA.items() if criterion.prunes_in_rounds)
UNSTRUCTURED = tuple(name for name, criterion in CRITERIA.items() if not criterion.structured_only)  # registry order


def get_criterion(name: str) -> Criterion:
  """The criterion registered as ``name`` (callable like its saliency function); an unknown name lists the valid ones."""
  try:
    return CRITERIA[name]
  except KeyError:
    raise ValueError(f'unknown criterion {name!r}; valid names: {", ".join(sorted(CRITERIA))}') from None
