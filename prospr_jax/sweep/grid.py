"""The grid of a sweep: criteria x sparsities x seeds plus the dense network per seed, each cell a config and a folder.

Sparsities are rounded to 6 decimals (the paper's ``1 - 0.8**k`` move by less
than 1e-6), so a cell's folder name, its printed command and its recorded config
all hold the same number.

Criteria are the registry's (pruning at initialization) and the references
that prune the trained dense network of the same seed (``after_training.REFERENCES``);
``all`` is the registry's unstructured criteria alone (not 3SP, which is structured only).
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

import ml_collections

from prospr_jax import sparsity as sparsity_lib
from prospr_jax.criteria import registry
from prospr_jax.sweep import after_training, paper_numbers

DENSE = 'dense'
PAPER = 'paper'
PAPER_SPARSITIES: tuple[float, ...] = tuple(round(s, 6) for s in paper_numbers.PAPER_SPARSITIES)


@dataclasses.dataclass(frozen=True)
class Cell:
  """One run of the grid; ``criterion == DENSE`` (sparsity 0) is the dense network of a seed."""
  criterion: str
  sparsity: float
  seed: int

  @property
  def is_dense(self) -> bool:
    return self.criterion == DENSE

  def directory(self, workdir: str | pathlib.Path) -> pathlib.Path:
    """``cells/<criterion>/sparsity_0.900/seed_0``, or ``cells/dense/seed_0``."""
    cells = pathlib.Path(workdir) / 'cells' / self.criterion
    return (cells if self.is_dense else cells / sparsity_folder(self.sparsity)) / f'seed_{self.seed}'

  def __str__(self) -> str:
    where = '' if self.is_dense else f' at {sparsity_lib.percent(self.sparsity)} sparsity'
    return f'{self.criterion}{where}, seed {self.seed}'


@dataclasses.dataclass(frozen=True)
class Grid:
  """What a sweep runs: ``seeds`` is a count (seeds 0 to seeds - 1)."""
  criteria: tuple[str, ...]
  sparsities: tuple[float, ...]
  seeds: int

  def cells(self) -> list[Cell]:
    """Seed by seed (a stopped sweep holds whole seeds first): the dense cell, then every criterion x sparsity."""
    return [cell for seed in range(self.seeds) for cell in (
        Cell(DENSE, 0.0, seed), *(Cell(c, s, seed) for c in self.criteria for s in self.sparsities))]

  def union(self, other: Grid) -> Grid:
    """Both grids' cells (and more: every criterion at every sparsity), this grid's criteria first."""
    criteria = self.criteria + tuple(c for c in other.criteria if c not in self.criteria)
    return Grid(criteria, tuple(sorted(set(self.sparsities) | set(other.sparsities))), max(self.seeds, other.seeds))

  def to_dict(self) -> dict[str, object]:
    return {'criteria': list(self.criteria), 'sparsities': list(self.sparsities), 'seeds': self.seeds}

  @classmethod
  def from_dict(cls, values: dict) -> Grid:
    return cls(tuple(values['criteria']), tuple(values['sparsities']), int(values['seeds']))


def sparsity_folder(sparsity: float) -> str:
  """``sparsity_0.900``: three decimals, more when the value has them."""
  text = f'{sparsity:.3f}' if round(sparsity, 3) == sparsity else f'{sparsity:.6f}'.rstrip('0')
  return f'sparsity_{text}'


def parse_criteria(text: str) -> tuple[str, ...]:
  """``prospr,snip,lottery_rewind_iterative``; ``all`` (every registered unstructured criterion, no reference) alone or in the
  list (``all,lottery_rewind_iterative``); unknown names refused."""
  items = [item.strip() for item in text.split(',') if item.strip()]
  names = [name for item in items for name in (registry.UNSTRUCTURED if item == 'all' else (item,))]
  if not names:
    raise ValueError(f'--criteria: name at least one criterion, or all; valid names: {_valid_criteria()}')
  for name in names:
    if name not in registry.CRITERIA and not after_training.is_reference(name):
      dense = ' (the dense network runs for every seed without asking)' if name == DENSE else ''
      raise ValueError(f'--criteria: unknown criterion {name!r}{dense}; valid names: all, {_valid_criteria()} '
                       '(all: every one but the references that prune after training, '
                       f'{", ".join(after_training.REFERENCES)})')
  return tuple(dict.fromkeys(names))


def _valid_criteria() -> str:
  return ', '.join(sorted([*registry.CRITERIA, *after_training.REFERENCES]))


def parse_cell(text: str) -> Cell:
  """``lottery_rewind_iterative,0.9,0`` (criterion, sparsity, seed; ``dense,0,0`` for the dense cell) as a Cell."""
  parts = [part.strip() for part in text.split(',')]
  try:
    criterion, sparsity, seed = parts
    cell = Cell(criterion, 0.0 if criterion == DENSE else round(float(sparsity), 6), int(seed))
  except ValueError:
    raise ValueError(f'--only_cell: cannot read {text!r}; give criterion,sparsity,seed like '
                     'lottery_rewind_iterative,0.9,0 (dense,0,0 for the dense cell of seed 0)') from None
  return cell


def parse_sparsities(text: str) -> tuple[float, ...]:
  """``paper`` (1 - 0.8**k, k = 1..18), a list like ``0.5,0.9``, or both (``paper,0.993``); sorted, unique."""
  values: list[float] = []
  for item in (item.strip() for item in text.split(',')):
    if item == PAPER:
      values.extend(PAPER_SPARSITIES)
      continue
    try:
      value = float(item)
    except ValueError:
      raise ValueError(f'--sparsities: cannot read {item!r} as a number; give fractions in [0, 1) like '
                       '0.5,0.9, or paper (the 18 sparsities of the paper), or both: paper,0.993') from None
    if not 0.0 <= round(value, 6) < 1.0:
      raise ValueError(f'--sparsities: sparsity must be in [0, 1) (the fraction of weights removed), got {item}')
    values.append(round(value, 6))
  return tuple(sorted(set(values)))


def check_seeds(seeds: int) -> int:
  if seeds < 1:
    raise ValueError(f'--seeds must be >= 1 (the number of seeds, run as 0 to seeds - 1), got {seeds}')
  return seeds


def make_grid(criteria: str | Sequence[str], sparsities: str | Sequence[float], seeds: int) -> Grid:
  """The grid of ``--criteria``, ``--sparsities`` and ``--seeds``, as text or as sequences; bad values refused."""
  criteria_text = criteria if isinstance(criteria, str) else ','.join(criteria)
  sparsities_text = sparsities if isinstance(sparsities, str) else ','.join(repr(float(s)) for s in sparsities)
  return Grid(parse_criteria(criteria_text), parse_sparsities(sparsities_text), check_seeds(seeds))


def check_base_config(config: ml_collections.ConfigDict) -> None:
  """What every cell needs of the base config: training to do, and no mask of its own."""
  if config.num_epochs < 1:
    raise ValueError(f'a sweep compares trained networks: config.num_epochs must be >= 1, got {config.num_epochs}')
  if config.mask_path:
    raise ValueError(f'a sweep prunes every cell itself: drop config.mask_path={config.mask_path!r}')


def cell_config(base: ml_collections.ConfigDict, cell: Cell) -> ml_collections.ConfigDict:
  """The base config with the cell's criterion, sparsity and seed; the dense cell keeps the base criterion."""
  config = base.copy_and_resolve_references()
  config.unlock()
  config.seed = cell.seed
  config.compare_dense = False
  if not cell.is_dense:
    config.criterion = cell.criterion
    config.prune.sparsity = cell.sparsity
  return config


def cell_overrides(cell: Cell) -> list[str]:
  """The flags that turn the base config into ``cell_config(base, cell)`` (after the user's: the last one wins)."""
  flags = [] if cell.is_dense else [f'--config.criterion={cell.criterion}',
                                    f'--config.prune.sparsity={cell.sparsity!r}']
  return flags + [f'--config.seed={cell.seed}', '--config.compare_dense=False']
