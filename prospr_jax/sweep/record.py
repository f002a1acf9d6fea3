"""``<workdir>/sweep.json``: the base config and grid of a sweep, so a rerun continues the same sweep or is refused.

A rerun may add criteria, sparsities and seeds (the recorded grid grows to the
union), and change only how cells run (``workdir.HOW_TO_RUN``); any other field
of the base config differs from the one its finished cells were trained with.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import ml_collections

from prospr_jax import files
from prospr_jax.runtime import workdir as workdir_lib
from prospr_jax.sweep.grid import Grid

SWEEP_FILE = 'sweep.json'


class SweepConfigError(workdir_lib.WorkdirError):
  """The sweep's workdir holds cells of another base config; the message names the fields."""


def read_sweep(workdir: pathlib.Path) -> tuple[dict[str, Any], Grid] | None:
  """The recorded base config and grid, or None in a new workdir."""
  path = workdir / SWEEP_FILE
  if not path.exists():
    return None
  recorded = files.read_json(path, required=('base_config', 'grid'), fix='restore it from where the sweep was '
                             'committed (results/<name>/sweep.json), or use another --workdir')
  try:
    return recorded['base_config'], Grid.from_dict(recorded['grid'])
  except (KeyError, TypeError, ValueError) as error:
    raise files.UnreadableFileError(f'{path} holds no readable grid ({type(error).__name__}: {error}): restore it from '
                                    'where the sweep was committed, or use another --workdir') from None


def check_same_base(workdir: pathlib.Path, recorded: dict[str, Any], current: dict[str, Any]) -> None:
  """Refuse a base config that would compute other cells, naming each differing field and both values."""
  refused = [key for key in workdir_lib.differing_fields(recorded, current) if key not in workdir_lib.HOW_TO_RUN]
  if refused:
    shown = workdir_lib.describe(refused, recorded, current)
    raise SweepConfigError(f'{workdir} holds a sweep of another base config ({shown}); its cells belong to that '
                           'config. Rerun with that config, or use another --workdir')


def record_sweep(workdir: pathlib.Path, config: ml_collections.ConfigDict, grid: Grid) -> Grid:
  """Check ``config`` against the recorded one, record both (the grid as the union), return the union grid."""
  current = config.to_dict()
  recorded = read_sweep(workdir)
  if recorded is not None:
    check_same_base(workdir, recorded[0], current)
    grid = recorded[1].union(grid)
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    files.write_json(workdir / SWEEP_FILE, {'base_config': current, 'grid': grid.to_dict()})
  return grid
