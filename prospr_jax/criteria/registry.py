"""Criteria by name, so a config can say ``criterion = 'prospr'``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prospr_jax.criteria.magnitude import magnitude_saliency
from prospr_jax.criteria.prospr import prospr_saliency
from prospr_jax.criteria.random import random_saliency
from prospr_jax.criteria.snip import snip_saliency

Criterion = Callable[..., Any]

CRITERIA: dict[str, Criterion] = {
    'prospr': prospr_saliency,
    'snip': snip_saliency,
    'magnitude': magnitude_saliency,
    'random': random_saliency,
}


def get_criterion(name: str) -> Criterion:
  """The saliency function registered as ``name``; an unknown name lists the valid ones."""
  try:
    return CRITERIA[name]
  except KeyError:
    raise ValueError(f'unknown criterion {name!r}; valid names: {", ".join(sorted(CRITERIA))}') from None
