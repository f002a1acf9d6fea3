"""Per-layer sparsity of a mask: kept, total and density, as a table and as JSON."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from chex import ArrayTree

from prospr_jax import files, masks as masks_lib


def percent(fraction: float, decimals: int = 1) -> str:
  """``fraction`` in %, with more than ``decimals`` decimals where fewer would show 100 (or 0) for a fraction that
  is not: 0.9999 is ``'99.99%'``, never ``'100.0%'``."""
  for places in range(decimals, 8):
    text = f'{100 * fraction:.{places}f}'
    if (float(text) < 100 or fraction >= 1) and (float(text) > 0 or fraction <= 0):
      break
  return f'{text}%'


@dataclasses.dataclass(frozen=True)
class LayerSparsity:
  name: str
  shape: tuple[int, ...]
  kept: int
  total: int

  @property
  def density(self) -> float:
    return self.kept / self.total


@dataclasses.dataclass(frozen=True)
class SparsityReport:
  """What a mask keeps, layer by layer; ``str(report)`` is a table, ``report.save_json(path)`` a file."""
  layers: tuple[LayerSparsity, ...]

  @property
  def kept(self) -> int:
    return sum(layer.kept for layer in self.layers)

  @property
  def total(self) -> int:
    return sum(layer.total for layer in self.layers)

  @property
  def density(self) -> float:
    return self.kept / self.total

  def to_dict(self) -> dict[str, Any]:
    return {
        'layers': [dict(dataclasses.asdict(layer), shape=list(layer.shape), density=layer.density)
                   for layer in self.layers],
        'kept': self.kept, 'total': self.total, 'density': self.density, 'sparsity': 1.0 - self.density,
    }

  def save_json(self, path: str | os.PathLike[str], **extra: Any) -> None:
    """Write ``{**extra, **self.to_dict()}`` (``extra``: what made the mask), atomically."""
    files.write_json(path, {**extra, **self.to_dict()})

  def __str__(self) -> str:
    width = max([len('layer'), len('total')] + [len(layer.name) for layer in self.layers])
    rows = [f'{"layer":<{width}}  {"shape":>18}  {"kept":>12}  {"total":>12}  {"density":>8}']
    rows.append('-' * len(rows[0]))
    for layer in self.layers:
      rows.append(f'{layer.name:<{width}}  {str(layer.shape):>18}  {layer.kept:>12,}  {layer.total:>12,}  '
                  f'{layer.density:>8.2%}')
    rows.append('-' * len(rows[0]))
    rows.append(f'{"total":<{width}}  {"":>18}  {self.kept:>12,}  {self.total:>12,}  {self.density:>8.2%}')
    return '\n'.join(rows)


def sparsity_report(masks: ArrayTree, params: ArrayTree | None = None) -> SparsityReport:
  """Count kept weights per masked layer.

  With ``params``, a per-channel mask counts the weights of its kept channels
  (and shapes are the parameters'); without, it counts mask entries.
  """
  mask_leaves = jax.tree_util.tree_leaves_with_path(masks, is_leaf=masks_lib.is_none)
  if params is None:
    shapes = [jnp.shape(mask) for _, mask in mask_leaves]
  else:
    masks_lib.check_same_structure(masks, params)
    shapes = [jnp.shape(param) for param in jax.tree.leaves(params)]
  layers = []
  for (path, mask), shape in zip(mask_leaves, shapes):
    if mask is None:
      continue
    weights_per_entry = int(np.prod(shape)) // int(np.prod(jnp.shape(mask)))
    kept = int(np.count_nonzero(np.asarray(mask))) * weights_per_entry
    layers.append(LayerSparsity(masks_lib.layer_name(path), tuple(shape), kept, int(np.prod(shape))))
  return SparsityReport(tuple(layers))
