"""``--print_commands``: one shell command per unfinished cell (for a cluster), then the one that builds the tables.

Every cell is ``sweep.py ... --only_cell=<criterion>,<sparsity>,<seed>`` with the user's ``--config`` and
overrides, which runs that one cell of the recorded sweep exactly as the sweep would (``cells.run_cell``): the
same config, the same folder (an ordinary ``prune.py`` / ``train.py`` workdir), and the same outcomes recorded
as results, a layer collapse or a diverged run included (a bare ``prune.py`` would stop with an error and leave
the cell unfinished, and its seed would drop out of the means). A cell of a reference that prunes after training
(``magnitude_after_training``, ``lottery_rewind_one_shot``, ``lottery_rewind_iterative``) needs its seed's dense
cell finished first (refused, naming it, otherwise), so start it after that dense command. A cell of
``lottery_rewind_iterative`` also runs the unfinished rounds below it (each its own cell): run one seed's
iterative cells one after another (two commands running the same round are refused: its folder is locked).
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex
from collections.abc import Sequence

import ml_collections

from prospr_jax.sweep import cells as cells_lib
from prospr_jax.sweep.grid import Cell, Grid
from prospr_jax.sweep.runner import prepare

CACHE_ENV = 'JAX_COMPILATION_CACHE_DIR'  # JAX reads its persistent cache folder from here


def config_overrides(argv: Sequence[str]) -> list[str]:
  """The ``--config.<field>=<value>`` arguments of a command line, ``--config.x 1`` joined to ``--config.x=1``."""
  found, index = [], 0
  while index < len(argv):
    arg = argv[index]
    if re.match(r'--?config\.', arg):
      arg = '--' + arg.lstrip('-')
      if '=' not in arg and index + 1 < len(argv) and not argv[index + 1].startswith('--'):
        index += 1
        arg = f'{arg}={argv[index]}'
      found.append(arg)
    index += 1
  return found


def _script(script_dir: str, name: str) -> str:
  return os.path.join(script_dir, name)


def cell_command(cell: Cell, workdir: pathlib.Path, config_argument: str, overrides: Sequence[str], *,
                 script_dir: str = '', python: str = 'python', cache_dir: str | None = None) -> str:
  """``python sweep.py --config <config> <overrides> --workdir <sweep> --only_cell=<criterion>,<sparsity>,<seed>``."""
  words = [python, _script(script_dir, 'sweep.py'), '--config', config_argument, *overrides, '--workdir',
           str(workdir), f'--only_cell={cell.criterion},{cell.sparsity!r},{cell.seed}']
  prefix = f'{CACHE_ENV}={shlex.quote(cache_dir)} ' if cache_dir else ''
  return prefix + shlex.join(words)


def aggregate_command(workdir: pathlib.Path, config_argument: str, overrides: Sequence[str], *,
                      script_dir: str = '', python: str = 'python') -> str:
  """The command that builds ``results.jsonl``, the tables and the figure once the cells are done."""
  return shlex.join([python, _script(script_dir, 'sweep.py'), '--config', config_argument, *overrides,
                     '--workdir', str(workdir), '--aggregate_only'])


def pending_cells(config: ml_collections.ConfigDict, grid: Grid, workdir: str | pathlib.Path) -> list[Cell]:
  """Record the sweep (as running it would), then its unfinished cells in the grid's order."""
  workdir = pathlib.Path(workdir)
  prepare(config, grid, workdir)
  return [cell for cell in grid.cells() if not cells_lib.is_finished(cell, workdir, config)]


def pending_commands(config: ml_collections.ConfigDict, grid: Grid, workdir: str | pathlib.Path,
                     config_argument: str, overrides: Sequence[str], *, script_dir: str = '',
                     python: str = 'python', cache_dir: str | None = None) -> list[str]:
  """Record the sweep (as running it would), then one command per unfinished cell and the aggregation's."""
  workdir = pathlib.Path(workdir)
  commands = [cell_command(cell, workdir, config_argument, overrides, script_dir=script_dir, python=python,
                           cache_dir=cache_dir)
              for cell in pending_cells(config, grid, workdir)]
  return commands + [aggregate_command(workdir, config_argument, overrides, script_dir=script_dir, python=python)]
