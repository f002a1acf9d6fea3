"""Criteria by name, so a config can say ``criterion = 'prospr'``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

from prospr_jax.criteria.force import force_saliency, iterative_snip_saliency
from prospr_jax.criteria.grasp import grasp_saliency
from prospr_jax.criteria.magnitude import magnitude_saliency
from prospr_jax.criteria.prospr import prospr_saliency
from prospr_jax.criteria.random import random_saliency
from prospr_jax.criteria.snip import snip_saliency
from prospr_jax.criteria.synflow import synflow_saliency

Criterion = Callable[..., Any]


def first_batch_only(criterion: Criterion) -> Criterion:
  """The single-batch form of a multi-batch criterion: it sees ``batches[:1]``."""
  @functools.wraps(criterion)
  def wrapped(params, batches, **kwargs):
    return criterion(params, jax.tree.map(lambda x: x[:1], batches), **kwargs)
  return wrapped


CRITERIA: dict[str, Criterion] = {
    'prospr': prospr_saliency,
    'snip': first_batch_only(snip_saliency),
    'snip_mb': snip_saliency,
    'grasp': first_batch_only(grasp_saliency),
    'grasp_mb': grasp_saliency,
    'synflow': synflow_saliency,
    'iterative_snip': iterative_snip_saliency,
    'force': force_saliency,
    'magnitude': magnitude_saliency,
    'random': random_saliency,
}
# These take `sparsity`, `rounds`, `mask_fn` and `invert`: they prune in rounds and rank by the result.
ITERATIVE = frozenset({'synflow', 'iterative_snip', 'force'})


def get_criterion(name: str) -> Criterion:
  """The saliency function registered as ``name``; an unknown name lists the valid ones."""
  try:
    return CRITERIA[name]
  except KeyError:
    raise ValueError(f'unknown criterion {name!r}; valid names: {", ".join(sorted(CRITERIA))}') from None
