"""Run a sweep: every unfinished cell in turn, resumable, within a wall-clock budget, aggregating as it goes.

Cells run one after another in one process. The trainer's compiled steps serve
every cell of the same model; the criteria's programs, compiled for one cell's
own loss, are dropped after it (``release_compiled_programs``), so the process's
memory stays flat over a long sweep. With JAX's persistent compilation cache
(``enable_compilation_cache``) a program compiled once is loaded, not compiled
again, by later cells and processes.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import json
import logging
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from prospr_jax import files
from prospr_jax.harness import validation
from prospr_jax.sweep import after_training, cells as cells_lib, figure, record, table
from prospr_jax.sweep.grid import Cell, Grid, cell_config, check_base_config, make_grid, parse_cell
from prospr_jax.xla_cpu import host_memory

log = logging.getLogger(__name__)

RESULTS_FILE = 'results.jsonl'
MIN_CACHED_COMPILE_SECONDS = 0.5
JITTED = type(jax.jit(lambda: None))  # what jax.jit returns (it has clear_cache)


@dataclasses.dataclass(frozen=True)
class SweepOutcome:
  total: int  # cells of this call's grid
  skipped: int  # already finished when the call began
  ran: int
  remaining: int  # unfinished when the call ended (a spent budget)
  seconds: tuple[float, ...]  # wall time of each cell run, in order


class CellInterrupted(KeyboardInterrupt):
  """Ctrl-C (or SIGINT) while a cell ran: carries that cell's folder, whose checkpoint a rerun resumes from."""

  def __init__(self, directory: pathlib.Path):
    super().__init__(str(directory))
    self.directory = directory


def enable_compilation_cache(directory: str | pathlib.Path) -> None:
  """Keep compiled programs that took over 0.5 s on disk, for the next cells and the next processes.

  Not in a multi-process CPU run: with jax 0.12, two-process runs whose train step came from the cache hung in
  its gloo all-reduce (``benchmarks/multiprocess_cache.py``).
  """
  if jax.process_count() > 1 and jax.default_backend() == 'cpu':
    log.warning('No compilation cache in a multi-process CPU run: programs loaded from it deadlocked in their gloo '
                'collectives (jax 0.12); every process compiles its programs')
    return
  jax.config.update('jax_compilation_cache_dir', str(directory))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', MIN_CACHED_COMPILE_SECONDS)


def validate_sweep(config: ml_collections.ConfigDict, grid: Grid) -> None:
  """Refuse a base config or grid that some cell cannot run, before anything runs or is written."""
  check_base_config(config)
  for cell in grid.cells():
    validate_cell_config(cell, cell_config(config, cell))


def validate_cell_config(cell: Cell, config: ml_collections.ConfigDict) -> None:
  """The cell's config checked as its run checks it: a reference's by ``after_training``, any other's as usual."""
  if after_training.is_reference(cell.criterion):
    after_training.validate_config(config)
  else:
    validation.validate_config(config)


def prepare(config: ml_collections.ConfigDict, grid: Grid, workdir: pathlib.Path) -> Grid:
  """Validate, then record the sweep in ``workdir`` (refusing another base config); return the recorded grid."""
  validate_sweep(config, grid)
  return record.record_sweep(workdir, config, grid)


def aggregate(workdir: str | pathlib.Path, config: ml_collections.ConfigDict | None = None, *,
              with_figure: bool = True) -> dict[tuple[str, float], table.Summary]:
  """Rebuild ``results.jsonl``, ``table.md``, ``table.csv`` (and the figure) from the finished cells.

  Given a ``config``, first refuse one that differs from the sweep's recorded base config.
  """
  workdir = pathlib.Path(workdir)
  recorded = record.read_sweep(workdir)
  if recorded is None:
    raise FileNotFoundError(f'{workdir / record.SWEEP_FILE} is missing: run the sweep in this --workdir first')
  base, grid = recorded
  if config is not None:
    record.check_same_base(workdir, base, config.to_dict())
  base_config = ml_collections.ConfigDict(base)
  rows = [row for cell in grid.cells() if (row := cells_lib.cell_row(cell, workdir, base_config)) is not None]
  if jax.process_index() == 0:
    files.write_text(workdir / RESULTS_FILE, ''.join(files.json_dumps(row) + '\n' for row in rows))
  return write_tables(workdir, base, grid, rows, with_figure=with_figure)


def write_tables(folder: pathlib.Path, base: dict[str, Any], grid: Grid, rows: list[dict[str, Any]], *,
                 with_figure: bool = True) -> dict[tuple[str, float], table.Summary]:
  """``table.md``, ``table.csv`` (and the figure) of ``rows`` in ``folder``; a collapsed seed counts at chance."""
  summaries = table.summarize(rows, table.chance_top1(base))
  if jax.process_index() == 0:
    files.write_text(folder / 'table.md', table.table_markdown(summaries, grid, base, table.environments_note(rows)))
    files.write_text(folder / 'table.csv', table.table_csv(summaries, grid, base))
    if with_figure:
      figure.save_figure(figure.draw_figure(summaries, grid, base), folder / figure.FIGURE_NAME)
  return summaries


def tabulate_results(folder: str | pathlib.Path, *, with_figure: bool = True) -> dict[tuple[str, float], table.Summary]:
  """Rebuild the tables (and figure) of a results folder from its ``sweep.json`` and ``results.jsonl`` alone (no
  cells, no training): ``python -c "from prospr_jax.sweep import runner; runner.tabulate_results('results/x')"``."""
  folder = pathlib.Path(folder)
  recorded = record.read_sweep(folder)
  if recorded is None or not (folder / RESULTS_FILE).exists():
    raise FileNotFoundError(f'{folder} needs both {record.SWEEP_FILE} and {RESULTS_FILE} (a sweep\'s results folder)')
  rows = [json.loads(line) for line in (folder / RESULTS_FILE).read_text().splitlines() if line.strip()]
  return write_tables(folder, *recorded, rows, with_figure=with_figure)


def _clock(seconds: float) -> str:
  return str(datetime.timedelta(seconds=round(seconds)))


def _everyone_agrees(decision: bool) -> bool:
  """Process 0's decision, on every process (clocks differ; all processes must run the same cells)."""
  if jax.process_count() == 1:
    return decision
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(decision)))


def _log_progress(done: int, total: int, seconds: list[float], elapsed: float, left: int) -> None:
  mean = sum(seconds) / len(seconds)
  log.info('sweep: %d of %d cells done; elapsed %s, about %s left (%d cells at %.1f s, the mean so far)', done,
           total, _clock(elapsed), _clock(mean * left), left, mean)
  if len(seconds) == 2:
    log.info('sweep: the second cell of this process took %.1f s, the first %.1f s (compilation included)',
             seconds[1], seconds[0])


def run_sweep(config: ml_collections.ConfigDict, criteria: str | Sequence[str],
              sparsities: str | Sequence[float], seeds: int, workdir: str | pathlib.Path, *,
              budget_minutes: float | None = None) -> SweepOutcome:
  """Run every unfinished cell of the grid (a rerun continues), aggregate after each, stop when the budget is spent.

  ``criteria``, ``sparsities``: as the flags take them (``'all'``, ``'paper,0.993'``) or sequences; ``seeds``: a
  count. The budget is checked between cells: no cell starts after ``budget_minutes``, none is cut short.
  """
  if budget_minutes is not None and not budget_minutes > 0:
    raise ValueError(f'--budget_minutes must be > 0 (or left out: no limit), got {budget_minutes}')
  workdir = pathlib.Path(workdir)
  grid = make_grid(criteria, sparsities, seeds)
  prepare(config, grid, workdir)
  every = grid.cells()
  pending = [cell for cell in every if not cells_lib.is_finished(cell, workdir, config)]  # refuses foreign cells
  done_before = len(every) - len(pending)
  log.info('sweep: %d cells (%d criteria x %d sparsities x %d seeds, and dense per seed) in %s: %d finished, '
           '%d to run', len(every), len(grid.criteria), len(grid.sparsities), grid.seeds, workdir, done_before,
           len(pending))
  start, seconds = time.perf_counter(), []
  for cell in pending:
    elapsed = time.perf_counter() - start
    if _everyone_agrees(budget_minutes is not None and elapsed >= 60 * budget_minutes):
      log.info('sweep: the budget of %s minutes is spent (%s elapsed); %d of %d cells remain: rerun the same '
               'command to continue', budget_minutes, _clock(elapsed), len(pending) - len(seconds), len(every))
      break
    number = done_before + len(seconds) + 1
    log.info('sweep: cell %d of %d: %s (%s)', number, len(every), cell, cell.directory(workdir))
    seconds.append(_run_one(cell, config, workdir))
    release_compiled_programs()
    aggregate(workdir, with_figure=False)
    _log_progress(number, len(every), seconds, time.perf_counter() - start, len(pending) - len(seconds))
  aggregate(workdir)
  remaining = len(pending) - len(seconds)
  if not remaining:
    log.info('sweep: all %d cells finished; tables and figure in %s', len(every), workdir)
  return SweepOutcome(len(every), done_before, len(seconds), remaining, tuple(seconds))


def run_only_cell(config: ml_collections.ConfigDict, cell_text: str, workdir: str | pathlib.Path) -> float | None:
  """``--only_cell``: run one cell (``lottery_rewind_iterative,0.9,0``) of the sweep recorded in ``workdir``; its
  seconds, or None when it had finished. Nothing is aggregated: the printed ``--aggregate_only`` command does that."""
  workdir = pathlib.Path(workdir)
  recorded = record.read_sweep(workdir)
  if recorded is None:
    raise FileNotFoundError(f'--only_cell: {workdir / record.SWEEP_FILE} is missing: record the sweep first (sweep.py '
                            '--print_commands or a sweep run in this --workdir)')
  base, grid = recorded
  record.check_same_base(workdir, base, config.to_dict())
  cell = parse_cell(cell_text)
  if cell not in grid.cells():
    raise ValueError(f'--only_cell: {cell} is not a cell of the sweep in {workdir} (criteria {", ".join(grid.criteria)}'
                     f'; sparsities {", ".join(map(str, grid.sparsities))}; seeds 0 to {grid.seeds - 1})')
  validate_cell_config(cell, cell_config(config, cell))
  if cells_lib.is_finished(cell, workdir, config):
    log.info('sweep: %s has finished already (%s)', cell, cell.directory(workdir))
    return None
  if after_training.is_reference(cell.criterion):
    cells_lib.finished_dense_directory(cell, workdir, config)  # refused before anything runs while dense runs
  return _run_one(cell, config, workdir)


def release_compiled_programs() -> None:
  """After a cell: drop the criteria's compiled programs, and free the heap.

  The criteria's jitted functions take each cell's own loss as a static argument (a closure over that cell's model
  and variables), so no other cell reuses their programs, yet the caches would keep them, and the closures, for the
  life of the process: several MiB per cell (``benchmarks/sweep_rss.py``). The trainer's steps, keyed on the model
  by value, stay compiled for the next cells.
  """
  for name, module in list(sys.modules.items()):
    if name.startswith('prospr_jax.criteria.'):
      for value in vars(module).values():
        if isinstance(value, JITTED):
          value.clear_cache()
  gc.collect()
  host_memory.release_freed_heap()


def _run_one(cell: Cell, config: ml_collections.ConfigDict, workdir: pathlib.Path) -> float:
  try:
    return cells_lib.run_cell(cell, config, workdir)
  except KeyboardInterrupt as interrupt:  # the message must name this cell's checkpoint, not a finished cell's
    raise CellInterrupted(cell.directory(workdir)) from interrupt
  except Exception:
    log.error('sweep: cell %s failed (%s); finished cells are kept, rerunning continues', cell,
              cell.directory(workdir))
    raise

