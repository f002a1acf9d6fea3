"""Run a grid of experiments, criterion x sparsity x seed (plus the dense network per seed), and tabulate it.

  python sweep.py --config configs/<name>.py --criteria=prospr,snip --sparsities=paper --seeds=3

Each cell is a normal prune.py (or, dense, train.py) run in <workdir>/cells/...;
finished cells are skipped, so rerunning the same command continues a stopped
sweep; --import_results=results/<name> continues it on another machine. The references of the paper's Figure 2 that prune after training
(--criteria=...,magnitude_after_training,lottery_rewind_one_shot,lottery_rewind_iterative)
start from the dense cell of their seed, which runs first (prospr_jax/sweep/after_training.py);
the iterative one runs its rounds of 20% as the cells of their sparsities
(prospr_jax/sweep/iterative_rewinding.py).
Writes results.jsonl, table.md, table.csv and accuracy_vs_sparsity.{png,pdf}.
"""

import os
import pathlib
import sys
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from prospr_jax import sweep
from prospr_jax.harness import entry, flag_parsing
from prospr_jax.sweep import after_training, parallel

_CONFIG = flag_parsing.define_config_flag('configs/default.py', 'Base config of every cell (relative to the current '
                                          'folder, else to this script\'s); --config.<field>=<value> overrides it.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output folder (default: workdir/<config name>_sweep).')
_CRITERIA = flags.DEFINE_string('criteria', None, 'Comma-separated criteria (prospr,snip,...), or all (every '
                                'at-init criterion); magnitude_after_training, lottery_rewind_one_shot and '
                                'lottery_rewind_iterative prune after training.')
_SPARSITIES = flags.DEFINE_string('sparsities', 'paper', 'Comma-separated sparsities in [0, 1), or paper (1 - 0.8^k, '
                                  'k = 1..18: 20.0% ... 98.2%), or both: paper,0.993,0.995.')
_SEEDS = flags.DEFINE_integer('seeds', 3, 'Number of seeds per cell (seeds 0 to N - 1).')
_BUDGET = flags.DEFINE_float('budget_minutes', None, 'Start no cell after this many minutes (none is cut short); '
                             'rerunning the same command continues.')
_PRINT = flags.DEFINE_bool('print_commands', False, 'Print one shell command per unfinished cell (and the final '
                           '--aggregate_only one) instead of running them.')
_AGGREGATE = flags.DEFINE_bool('aggregate_only', False, 'Only rebuild results.jsonl, the tables and the figure from '
                               'the finished cells.')
_ONLY_CELL = flags.DEFINE_string('only_cell', None, 'Run just this cell of the sweep recorded in --workdir, given as '
                                 'criterion,sparsity,seed (prospr,0.9,0): what --print_commands prints for each '
                                 'cell. Aggregates nothing.')
_IMPORT = flags.DEFINE_string('import_results', None, 'A results folder of this sweep from another machine (its '
                              'sweep.json and results.jsonl, e.g. results/<name>): its rows become finished cells '
                              'here (after checking each was trained with this config), so only the rest run.')
_PARALLEL = flags.DEFINE_integer('parallel_cells', 1, 'Cells run at once, each its own process with 1/N of the '
                                  'device (GPU memory, or CPU cores); the references that prune after training run '
                                  'after the rest, one at a time.', lower_bound=1)
_CACHE = flags.DEFINE_string('compilation_cache', None, 'JAX persistent compilation cache folder (default: '
                             '<workdir>/jax_cache; "" turns it off).')


def _default_workdir(config_filename: str) -> pathlib.Path:
  file, _, variant = config_filename.partition(':')
  return pathlib.Path('workdir') / (pathlib.Path(file).stem + (f'_{variant}' if variant else '') + '_sweep')


def _print_table(workdir: pathlib.Path) -> None:
  if jax.process_index() == 0:
    print((workdir / 'table.md').read_text(), flush=True)


def _run(config_filename: str, workdir: pathlib.Path) -> None:
  config = _CONFIG.value
  if getattr(flags.FLAGS, 'start_over', False):
    raise ValueError('--start_over: a sweep never deletes its cells; use another --workdir, or delete the cell '
                     'folders to rerun')
  if _AGGREGATE.value:
    sweep.aggregate(workdir, config)
    _print_table(workdir)
    return
  cache = str(workdir / 'jax_cache') if _CACHE.value is None else _CACHE.value
  if _ONLY_CELL.value:
    if cache:
      sweep.enable_compilation_cache(cache)
    seconds = sweep.run_only_cell(config, _ONLY_CELL.value, workdir)
    if jax.process_index() == 0:
      print(f'cell {_ONLY_CELL.value}: ' + ('had finished already' if seconds is None else f'ran in {seconds:.1f} s'),
            flush=True)
    return
  if not _CRITERIA.value:
    raise ValueError('--criteria is required: a comma-separated list (prospr,snip,...) or all')
  grid = sweep.make_grid(_CRITERIA.value, _SPARSITIES.value, _SEEDS.value)
  sweep.validate_sweep(config, grid)
  entry.check_workdir(workdir)
  if _IMPORT.value:
    imported = sweep.import_results(config, grid, _IMPORT.value, workdir)
    if jax.process_index() == 0:
      print(f'--import_results: {imported.imported} finished cells imported from {_IMPORT.value} '
            f'({imported.already} had finished in {workdir} already)', flush=True)
  if _PRINT.value:
    commands = sweep.pending_commands(config, grid, workdir, config_filename, sweep.config_overrides(sys.argv[1:]),
                                      script_dir=os.path.dirname(sys.argv[0]), cache_dir=cache or None)
    print('\n'.join(commands), flush=True)
    return
  if _PARALLEL.value > 1:
    _run_parallel(config, grid, workdir, config_filename, cache)
    return
  if cache:
    sweep.enable_compilation_cache(cache)
  outcome = sweep.run_sweep(config, grid.criteria, grid.sparsities, grid.seeds, workdir,
                            budget_minutes=_BUDGET.value)
  _print_table(workdir)
  if outcome.remaining and jax.process_index() == 0:
    print(f'{outcome.remaining} of {outcome.total} cells remain (budget spent): rerun the same command to continue',
          flush=True)


def _run_parallel(config, grid, workdir: pathlib.Path, config_filename: str, cache: str) -> None:
  cells = sweep.pending_cells(config, grid, workdir)
  commands = [sweep.cell_command(cell, workdir, config_filename, sweep.config_overrides(sys.argv[1:]),
                                 script_dir=os.path.dirname(os.path.abspath(sys.argv[0])), python=sys.executable,
                                 cache_dir=cache or None) for cell in cells]
  deadline = time.time() + 60 * _BUDGET.value if _BUDGET.value else None
  failures, skipped = parallel.run(commands, _PARALLEL.value, workdir, parallel.backend(), deadline,
                                   after=[after_training.is_reference(cell.criterion) for cell in cells])
  sweep.aggregate(workdir, config)
  _print_table(workdir)
  if skipped:
    print(f'{skipped} of {len(commands)} cells remain (budget spent): rerun the same command to continue', flush=True)
  if failures:
    raise ValueError(f'{len(failures)} of {len(commands)} cells failed (finished cells are kept; rerun the same '
                     'command to retry): ' + '; '.join(failures))


def main(argv):
  del argv
  entry.start(_CONFIG.value)  # as prune.py and train.py: SIGTERM saves a checkpoint, then exit code 143
  config_filename = config_flags.get_config_filename(flags.FLAGS['config'])
  workdir = pathlib.Path(_WORKDIR.value) if _WORKDIR.value else _default_workdir(config_filename)
  made = entry.first_missing_folder(workdir)
  try:
    _run(config_filename, workdir)
  except (Exception, KeyboardInterrupt) as error:  # pylint: disable=broad-except
    running = error.directory if isinstance(error, sweep.CellInterrupted) else workdir  # Ctrl-C names its cell
    failure = entry.failure_of(error, running)  # one line: user errors 2, a full disk 1, Ctrl-C 130, SIGTERM 143
    if failure is None:
      raise
    entry.remove_if_bare(made)  # a refused sweep (or import) leaves no empty workdir behind
    message = failure[0].replace('rerun the same command to resume', 'rerun the same command to continue the sweep;'
                                 ' finished cells are kept, the interrupted one resumes')
    flag_parsing.report(message)
    sys.exit(failure[1])


if __name__ == '__main__':
  app.run(main, flags_parser=flag_parsing.parse_flags)
