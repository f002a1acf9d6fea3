"""The sweep: a grid of normal runs that finishes, resumes, refuses another config, and tabulates and plots alike."""

import csv
import hashlib
import json
import logging
import os
import pathlib
import shlex
import shutil
import statistics
import subprocess
import sys

import pytest

from prospr_jax import sweep
from prospr_jax.criteria import registry
from prospr_jax.harness import entry
from prospr_jax.sweep import cells as cells_lib, commands, figure, grid as grid_lib, paper_numbers, runner, table

ROOT = pathlib.Path(__file__).resolve().parents[1]
CRITERIA, SPARSITIES, SEEDS = 'magnitude,random', '0.5,0.9', 2  # data-free criteria: fast
CELLS = 2 * 2 * 2 + 2  # criteria x sparsities x seeds, and dense per seed
OVERRIDES = ['--config.num_epochs=1', '--config.lr_milestones=()']  # one epoch: no learning-rate drop


def base_config():
  from configs import default
  config = default.get_config()
  config.num_epochs, config.lr_milestones = 1, ()
  return config


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  """A workdir holding the whole tiny grid, run once for the module."""
  workdir = tmp_path_factory.mktemp('sweep')
  outcome = sweep.run_sweep(base_config(), CRITERIA, SPARSITIES, SEEDS, workdir)
  return workdir, outcome


def copy_of(workdir, tmp_path, *removed_cells):
  """A copy of the finished workdir without the given cells' folders."""
  copy = tmp_path / 'copy'
  shutil.copytree(workdir, copy)
  for cell in removed_cells:
    shutil.rmtree(cell.directory(copy))
  return copy


def run_python(*args, env=None):
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
                        env=env)


def results_rows(workdir):
  return [json.loads(line) for line in (workdir / 'results.jsonl').read_text().splitlines()]


def csv_rows(workdir):
  with open(workdir / 'table.csv', newline='') as file:
    return {row['criterion']: row for row in csv.DictReader(file)}


def finished_results(workdir):
  return sorted(workdir.glob('cells/**/results.json'))


@pytest.mark.slow
def test_every_cell_finishes_with_one_results_row_each(finished):
  workdir, outcome = finished
  assert (outcome.total, outcome.ran, outcome.remaining) == (CELLS, CELLS, 0)
  rows = results_rows(workdir)
  assert len(rows) == CELLS == len(finished_results(workdir))
  assert {(r['criterion'], r['sparsity'], r['seed']) for r in rows} == {
      (c.criterion, c.sparsity, c.seed) for c in sweep.make_grid(CRITERIA, SPARSITIES, SEEDS).cells()}
  assert (workdir / 'cells/magnitude/sparsity_0.900/seed_1/results.json').exists()
  assert (workdir / 'cells/dense/seed_0/results.json').exists()
  pruned = next(r for r in rows if r['criterion'] == 'random' and r['sparsity'] == 0.9)
  dense = next(r for r in rows if r['criterion'] == 'dense')
  assert pruned['weight_sparsity'] == pytest.approx(0.9, abs=1e-3) and dense['weight_sparsity'] == 0.0
  assert pruned['kept_weights'] == pytest.approx(0.1 * dense['kept_weights'], abs=1)
  assert len(pruned['config_hash']) == 12 and pruned['pruning_seconds'] > 0 and pruned['training_seconds'] > 0
  assert 0 <= pruned['top5'] <= 1 and pruned['top1'] <= pruned['top5']
  import jax
  import jaxlib
  here = {'jax': jax.__version__, 'jaxlib': jaxlib.__version__, 'backend': 'cpu', 'device': 'cpu'}
  assert all(r['ran_on'] == [here] for r in rows)  # what computed each row
  assert 'environments' not in (workdir / 'table.md').read_text()  # one environment: no note


@pytest.mark.slow
def test_table_holds_mean_and_sample_std_over_seeds(finished):
  workdir, _ = finished
  rows, table_csv, markdown = results_rows(workdir), csv_rows(workdir), (workdir / 'table.md').read_text()
  for criterion, sparsity, label in (('magnitude', 0.9, '90.0'), ('random', 0.5, '50.0'), ('dense', 0.0, '90.0')):
    top1 = [100 * r['top1'] for r in rows if r['criterion'] == criterion and r['sparsity'] == sparsity]
    mean, std = statistics.fmean(top1), statistics.stdev(top1)
    assert float(table_csv[criterion][f'{label} mean']) == pytest.approx(mean, abs=1e-4)
    assert float(table_csv[criterion][f'{label} std']) == pytest.approx(std, abs=1e-4)
    assert table_csv[criterion][f'{label} n'] == '2'
    assert f'{mean:.2f} ± {std:.2f} (n=2)' in markdown
  assert '| Sparsity (%) | 50.0 | 90.0 |' in markdown


@pytest.mark.slow
def test_figure_points_equal_the_table(finished):
  workdir, _ = finished
  base, grid = sweep.record.read_sweep(workdir)
  summaries = sweep.aggregate(workdir)
  fig = figure.draw_figure(summaries, grid, base)
  lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
  table_csv = csv_rows(workdir)
  for criterion in ('magnitude', 'random'):
    x, y = lines[criterion].get_data()
    assert list(x) == [figure.sparsity_position(0.5), figure.sparsity_position(0.9)] == [pytest.approx(0.30103), 1.0]
    assert list(y) == [summaries[(criterion, s)].mean for s in (0.5, 0.9)]
    assert list(y) == pytest.approx([float(table_csv[criterion][f'{s} mean']) for s in ('50.0', '90.0')], abs=1e-4)
  assert set(lines['dense'].get_ydata()) == {summaries[('dense', 0.0)].mean}
  for suffix in ('png', 'pdf'):
    assert (workdir / f'{figure.FIGURE_NAME}.{suffix}').stat().st_size > 1000


@pytest.mark.slow
def test_rerun_skips_every_finished_cell_and_keeps_the_table(finished):
  workdir, _ = finished
  before = {path: path.stat().st_mtime_ns for path in finished_results(workdir)}
  markdown = (workdir / 'table.md').read_text()
  outcome = sweep.run_sweep(base_config(), CRITERIA, SPARSITIES, SEEDS, workdir)
  assert (outcome.skipped, outcome.ran, outcome.remaining) == (CELLS, 0, 0)
  assert {path: path.stat().st_mtime_ns for path in finished_results(workdir)} == before
  assert (workdir / 'table.md').read_text() == markdown


@pytest.mark.slow
def test_budget_stops_between_cells_and_the_resumed_sweep_gives_the_same_table(finished, tmp_path):
  workdir, _ = finished
  removed = (sweep.Cell('dense', 0.0, 1), sweep.Cell('random', 0.9, 1))
  copy = copy_of(workdir, tmp_path, *removed)
  stopped = sweep.run_sweep(base_config(), CRITERIA, SPARSITIES, SEEDS, copy, budget_minutes=1e-4)
  assert (stopped.ran, stopped.remaining) == (1, 1)  # the first cell runs whole; none starts after the budget
  assert cells_lib.is_finished(removed[0], copy, base_config()) and not cells_lib.is_finished(removed[1], copy,
                                                                                               base_config())
  assert '| random | ' in (copy / 'table.md').read_text() and '(n=1)' in (copy / 'table.md').read_text()
  resumed = sweep.run_sweep(base_config(), CRITERIA, SPARSITIES, SEEDS, copy)
  assert (resumed.skipped, resumed.ran, resumed.remaining) == (CELLS - 1, 1, 0)
  for name in ('table.md', 'table.csv'):
    assert (copy / name).read_text() == (workdir / name).read_text()


@pytest.mark.slow
def test_changed_base_config_is_refused_in_one_line_and_keeps_every_cell(finished):
  workdir, _ = finished
  before = finished_results(workdir)
  config = base_config()
  config.learning_rate = 0.05
  with pytest.raises(sweep.SweepConfigError, match=r'learning_rate: 0\.1 there, 0\.05 now') as refusal:
    sweep.run_sweep(config, CRITERIA, SPARSITIES, SEEDS, workdir)
  assert '\n' not in str(refusal.value)
  assert finished_results(workdir) == before and len(results_rows(workdir)) == CELLS


@pytest.mark.slow
def test_adding_to_the_grid_is_allowed_and_the_table_keeps_the_recorded_cells(finished, tmp_path):
  copy = copy_of(finished[0], tmp_path)
  commands_out = sweep.pending_commands(base_config(), sweep.make_grid('magnitude', '0.5,0.95', 3), copy,
                                        'configs/default.py', OVERRIDES)
  assert len(commands_out) == 1 + 1 + 3 + 1  # seeds 0, 1: 95%; seed 2: dense, 50%, 95%; and the aggregation
  assert sweep.record.read_sweep(copy)[1] == grid_lib.Grid(('magnitude', 'random'), (0.5, 0.9, 0.95), 3)


@pytest.mark.slow
def test_print_commands_lists_only_unfinished_cells(finished, tmp_path):
  copy = copy_of(finished[0], tmp_path, sweep.Cell('dense', 0.0, 0), sweep.Cell('random', 0.5, 1))
  printed = sweep.pending_commands(base_config(), sweep.make_grid(CRITERIA, SPARSITIES, SEEDS), copy,
                                   'configs/default.py', OVERRIDES)
  assert printed == [
      ("python sweep.py --config configs/default.py --config.num_epochs=1 '--config.lr_milestones=()' "
       f'--workdir {copy} --only_cell=dense,0.0,0'),
      ("python sweep.py --config configs/default.py --config.num_epochs=1 '--config.lr_milestones=()' "
       f'--workdir {copy} --only_cell=random,0.5,1'),
      ("python sweep.py --config configs/default.py --config.num_epochs=1 '--config.lr_milestones=()' "
       f'--workdir {copy} --aggregate_only')]


@pytest.mark.slow
def test_printed_cell_command_reruns_its_cell_to_the_same_accuracy(finished, tmp_path):
  cell = sweep.Cell('magnitude', 0.5, 1)
  copy = copy_of(finished[0], tmp_path, cell)
  env = {**os.environ, 'JAX_ENABLE_X64': '1'}  # float64, as tests/conftest.py runs the sweep in this process
  printed = run_python('sweep.py', '--config', 'configs/default.py', '--config.num_epochs', '1',
                       '--config.lr_milestones=()', f'--criteria={CRITERIA}', f'--sparsities={SPARSITIES}',
                       f'--seeds={SEEDS}', f'--workdir={copy}', '--print_commands', env=env)
  assert printed.returncode == 0, printed.stderr[-3000:]
  lines = printed.stdout.splitlines()
  assert len(lines) == 2 and lines[1].endswith('--aggregate_only')
  words = shlex.split(lines[0])
  assert words[0].startswith('JAX_COMPILATION_CACHE_DIR=') and words[1:3] == ['python', 'sweep.py']
  assert '--config.num_epochs=1' in words and words[-1] == '--only_cell=magnitude,0.5,1'
  cache_variable, cache_dir = words[0].split('=', 1)
  ran = run_python(*words[2:], env={**env, cache_variable: cache_dir})
  assert ran.returncode == 0, ran.stderr[-3000:]
  ours = json.loads((cell.directory(copy) / 'results.json').read_text())['pruned']
  theirs = json.loads((cell.directory(finished[0]) / 'results.json').read_text())['pruned']
  assert ours['eval_top1'] == theirs['eval_top1'] and ours['eval_loss'] == pytest.approx(theirs['eval_loss'], rel=1e-9)


@pytest.mark.slow
def test_cli_refuses_a_changed_base_config_with_one_error_line(finished):
  workdir, _ = finished
  done = run_python('sweep.py', '--config=configs/default.py', '--config.num_epochs=1', '--config.lr_milestones=()',
                    '--config.learning_rate=0.05', f'--criteria={CRITERIA}', f'--sparsities={SPARSITIES}',
                    f'--seeds={SEEDS}', f'--workdir={workdir}')
  assert done.returncode == 2
  errors = [line for line in done.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and 'learning_rate' in errors[0] and 'another base config' in errors[0]
  assert len(finished_results(workdir)) == CELLS


def test_a_dense_cell_trained_by_train_py_counts_as_finished(tmp_path):
  cell, config = sweep.Cell('dense', 0.0, 0), base_config()
  config.num_epochs = 2
  cell_dir = cell.directory(tmp_path)
  cell_dir.mkdir(parents=True)
  (cell_dir / 'config.json').write_text(json.dumps(sweep.cell_config(config, cell).to_dict()))
  rows = [{'epoch': 1, 'step': 10, 'eval_top1': 0.5, 'eval_top5': 0.9}]
  (cell_dir / 'metrics.jsonl').write_text(''.join(json.dumps(row) + '\n' for row in rows))
  assert not cells_lib.is_finished(cell, tmp_path, config)
  rows.append({'epoch': 2, 'step': 20, 'eval_top1': 0.75, 'eval_top5': 0.95})
  (cell_dir / 'metrics.jsonl').write_text(''.join(json.dumps(row) + '\n' for row in rows))
  row = cells_lib.cell_row(cell, tmp_path, config)
  assert (row['top1'], row['top5'], row['weight_sparsity'], row['cell']) == (0.75, 0.95, 0.0, 'cells/dense/seed_0')


def test_a_multi_process_cpu_sweep_compiles_without_the_cache(monkeypatch, tmp_path, caplog):
  import jax
  before = jax.config.jax_compilation_cache_dir
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  with caplog.at_level(logging.WARNING):
    runner.enable_compilation_cache(tmp_path / 'jax_cache')
  assert jax.config.jax_compilation_cache_dir == before and 'deadlocked in their gloo collectives' in caplog.text


def test_unknown_criterion_lists_the_valid_names():
  with pytest.raises(ValueError, match=r"unknown criterion 'prosper'; valid names: all, force, grasp") as refusal:
    sweep.parse_criteria('snip,prosper')
  assert 'synflow' in str(refusal.value)
  assert sweep.parse_criteria('all') == registry.UNSTRUCTURED  # no structured-only criterion (3SP)


@pytest.mark.parametrize('text, complaint', [('0.5,1.5', r'in \[0, 1\).*got 1.5'), ('0.5,1', 'got 1'),
                                             ('-0.1', 'got -0.1'), ('0.9,ninety', "cannot read 'ninety'"),
                                             ('', "cannot read ''")])
def test_bad_sparsities_are_refused_with_the_fix(text, complaint):
  with pytest.raises(ValueError, match=complaint):
    sweep.parse_sparsities(text)


def test_seeds_below_one_are_refused():
  with pytest.raises(ValueError, match='--seeds must be >= 1'):
    sweep.make_grid('snip', '0.9', 0)


def test_a_budget_that_is_not_positive_is_refused_before_anything_is_written(tmp_path):
  with pytest.raises(ValueError, match='--budget_minutes must be > 0'):
    sweep.run_sweep(base_config(), 'snip', '0.9', 1, tmp_path / 'sweep', budget_minutes=0)
  assert not (tmp_path / 'sweep').exists()


def test_paper_sparsities_are_one_minus_point_eight_to_the_k_printed_as_the_paper_does():
  grid = sweep.parse_sparsities('paper,0.993,0.9932')
  assert grid[:18] == sweep.PAPER_SPARSITIES and grid[0] == 0.2 and grid[17] == pytest.approx(1 - 0.8 ** 18, abs=1e-6)
  assert table.sparsity_labels(grid) == ['20.0', '36.0', '48.8', '59.0', '67.2', '73.8', '79.0', '83.2', '86.6',
                                         '89.3', '91.4', '93.1', '94.5', '95.6', '96.5', '97.2', '97.7', '98.2',
                                         '99.30', '99.32']
  assert grid_lib.sparsity_folder(0.9) == 'sparsity_0.900' and grid_lib.sparsity_folder(0.5904) == 'sparsity_0.5904'


def test_paper_numbers_hold_the_full_rows_of_appendix_b_beside_ours():
  assert {key: sorted(rows) for key, rows in paper_numbers.PAPER_TOP1.items()} == {
      ('resnet20', 'cifar10'): ['grasp', 'magnitude', 'magnitude_after_training', 'prospr', 'random', 'snip',
                                'synflow'],
      ('vgg16', 'cifar10'): ['lottery_rewind_iterative', 'magnitude', 'prospr', 'snip'],
      ('resnet18', 'tiny_imagenet'): ['magnitude', 'magnitude_after_training', 'prospr', 'snip', 'synflow']}
  assert all(len(row) == 18 for rows in paper_numbers.PAPER_TOP1.values() for row in rows.values())
  assert paper_numbers.paper_top1('vgg16', 'cifar10', 'prospr', sweep.PAPER_SPARSITIES[-1]) == (91.6, 0.4)
  assert paper_numbers.paper_top1('vgg16', 'cifar10', 'prospr', 0.9) is None
  grid = grid_lib.Grid(('prospr',), (sweep.PAPER_SPARSITIES[0], 0.9), 2)
  summaries = {('prospr', 0.2): table.Summary(93.5, 0.25, 2)}
  markdown = table.table_markdown(summaries, grid, {'model': 'vgg16', 'dataset': 'cifar10', 'num_epochs': 200})
  assert '| prospr | 93.50 ± 0.25 (n=2) [paper: 93.7 ± 0.2] | — |' in markdown
  assert '| dense | — | — |' in markdown


def test_config_overrides_are_passed_through_in_one_form():
  argv = ['--config', 'c.py', '--config.num_epochs', '1', '-config.prune.batch_size=32', '--seeds=2',
          '--config.learning_rate=-1']
  assert commands.config_overrides(argv) == ['--config.num_epochs=1', '--config.prune.batch_size=32',
                                             '--config.learning_rate=-1']


def test_progress_logs_cells_done_elapsed_and_time_left(caplog):
  logger = logging.getLogger(runner.__name__)
  logger.addHandler(caplog.handler)
  try:
    with caplog.at_level(logging.INFO, logger=runner.__name__):
      runner._log_progress(3, 10, [8.0, 2.0, 2.0], 12.0, 7)  # pylint: disable=protected-access
  finally:
    logger.removeHandler(caplog.handler)
  assert '3 of 10 cells done; elapsed 0:00:12, about 0:00:28 left' in caplog.text


@pytest.mark.slow
def test_a_criterion_that_empties_a_layer_is_recorded_as_layer_collapse_and_the_sweep_goes_on(tmp_path):
  """Layer collapse is a result of the criterion (chance accuracy), not a failure that stops the sweep."""
  outcome = sweep.run_sweep(base_config(), 'magnitude', '0.5,0.9999', 1, tmp_path)
  assert outcome.remaining == 0
  rows = {row['sparsity']: row for row in results_rows(tmp_path)}
  assert 'would remove every weight' in rows[0.9999]['collapsed'] and rows[0.9999]['top1'] is None
  assert rows[0.5]['top1'] is not None and 'collapsed' not in rows[0.5]
  assert '| 10.00 (n=1, 1 collapsed) |' in (tmp_path / 'table.md').read_text()  # at chance: 1 / 10 digits
  assert sweep.run_sweep(base_config(), 'magnitude', '0.5,0.9999', 1, tmp_path).ran == 0  # finished, not retried
  grid = sweep.make_grid('magnitude', '0.5,0.9999', 1)  # a collapsed row is imported as such
  assert sweep.import_results(base_config(), grid, tmp_path, tmp_path / 'fresh').imported == 3
  sweep.aggregate(tmp_path / 'fresh', with_figure=False)
  assert results_rows(tmp_path / 'fresh') == results_rows(tmp_path)


@pytest.mark.slow
def test_a_cell_whose_training_diverges_is_recorded_as_such_and_the_sweep_goes_on(tmp_path):
  """A NaN loss is a result of the recipe on that network (counted at chance, said so), not a failure that stops
  the sweep or leaves its seed out of the means."""
  config = base_config()
  config.learning_rate = 1e12
  criteria = 'magnitude,magnitude_after_training'  # the reference prunes the dense network, which diverged too
  outcome = sweep.run_sweep(config, criteria, '0.5', 1, tmp_path)
  assert outcome.remaining == 0
  rows = results_rows(tmp_path)
  assert [(r['criterion'], r['top1']) for r in rows] == [
      ('dense', None), ('magnitude', None), ('magnitude_after_training', None)]
  assert all(r['diverged'].startswith('training diverged: ') for r in rows[:2]), rows
  assert rows[2]['diverged'].startswith('the dense network it prunes') and 'diverged' in rows[2]['diverged']
  assert '| magnitude | 10.00 (n=1, 1 diverged) |' in (tmp_path / 'table.md').read_text()
  assert sweep.run_sweep(config, criteria, '0.5', 1, tmp_path).ran == 0  # finished, not retried
  grid = sweep.make_grid(criteria, '0.5', 1)  # a diverged row is imported as such
  assert sweep.import_results(config, grid, tmp_path, tmp_path / 'fresh').imported == 3
  sweep.aggregate(tmp_path / 'fresh', with_figure=False)
  assert results_rows(tmp_path / 'fresh') == results_rows(tmp_path)


def test_ctrl_c_in_a_cell_names_that_cells_checkpoint_not_a_finished_cells(monkeypatch, tmp_path):
  """A sweep holds many cells' checkpoints; the message must say where the interrupted cell resumes from."""
  finished_cell = tmp_path / 'cells' / 'snip' / 'sparsity_0.5' / 'seed_0' / 'pruned' / 'checkpoints' / '4680'
  finished_cell.mkdir(parents=True)

  def interrupted(cell, config, workdir):
    raise KeyboardInterrupt()
  monkeypatch.setattr(cells_lib, 'run_cell', interrupted)
  with pytest.raises(sweep.CellInterrupted) as caught:
    sweep.run_sweep(base_config(), 'magnitude', '0.5', 1, tmp_path)
  running = grid_lib.Cell('dense', 0.0, 0).directory(tmp_path)
  assert caught.value.directory == running
  message, code = entry.failure_of(caught.value, caught.value.directory)
  assert code == 130 and message.endswith('(before the first checkpoint)') and '4680' not in message
  (running / 'checkpoints' / '20').mkdir(parents=True)
  assert f'(step 20 in {running / "checkpoints"})' in entry.failure_of(caught.value, running)[0]


def results_folder(workdir, tmp_path, *left_out):
  """What a sweep commits (``sweep.json`` and ``results.jsonl``), without the rows of the ``left_out`` cells."""
  folder = tmp_path / 'results'
  folder.mkdir()
  shutil.copy(workdir / 'sweep.json', folder)
  left_out = {(cell.criterion, cell.sparsity, cell.seed) for cell in left_out}
  rows = [line for line in (workdir / 'results.jsonl').read_text().splitlines(keepends=True)
          if tuple(json.loads(line)[key] for key in ('criterion', 'sparsity', 'seed')) not in left_out]
  (folder / 'results.jsonl').write_text(''.join(rows))
  return folder


@pytest.mark.slow
def test_another_machine_continues_a_sweep_from_its_results_folder_running_only_the_missing_cells(finished, tmp_path):
  """The committed rows are the sweep's state: imported, they aggregate back to themselves; the rest runs."""
  workdir, _ = finished
  missing = sweep.Cell('random', 0.9, 1)
  folder, fresh = results_folder(workdir, tmp_path, missing), tmp_path / 'fresh'
  grid = sweep.make_grid(CRITERIA, SPARSITIES, SEEDS)
  assert sweep.import_results(base_config(), grid, folder, fresh) == sweep.ImportOutcome(CELLS - 1, 0)
  assert not list(fresh.glob('cells/**/checkpoints'))  # records only: nothing was trained
  resumed = sweep.run_sweep(base_config(), CRITERIA, SPARSITIES, SEEDS, fresh)
  assert (resumed.skipped, resumed.ran, resumed.remaining) == (CELLS - 1, 1, 0)
  rerun = [(row['criterion'], row['sparsity'], row['seed']) == (missing.criterion, missing.sparsity, missing.seed)
           for row in results_rows(workdir)]
  assert [row for row, again in zip(results_rows(fresh), rerun) if not again] == [
      row for row, again in zip(results_rows(workdir), rerun) if not again]  # imported rows: to the last digit
  timings = ('pruning_seconds', 'training_seconds', 'cell_seconds')
  assert [{k: v for k, v in row.items() if k not in timings} for row in results_rows(fresh)] == [
      {k: v for k, v in row.items() if k not in timings} for row in results_rows(workdir)]  # the rerun cell too
  assert (fresh / 'table.md').read_text().split('\n')[2:] == (workdir / 'table.md').read_text().split('\n')[2:]
  assert sweep.import_results(base_config(), grid, folder, fresh) == sweep.ImportOutcome(0, CELLS - 1)


@pytest.mark.slow
def test_importing_a_row_trained_with_another_config_is_refused_and_writes_no_cell(finished, tmp_path):
  folder = results_folder(finished[0], tmp_path)
  rows = results_rows(folder)
  rows[3]['config_hash'] = '000000000000'
  (folder / 'results.jsonl').write_text(''.join(json.dumps(row) + '\n' for row in rows))
  with pytest.raises(sweep.ResultsImportError, match=r'row 4 of .*has config hash 000000000000.*not trained with'):
    sweep.import_results(base_config(), sweep.make_grid(CRITERIA, SPARSITIES, SEEDS), folder, tmp_path / 'fresh')
  assert not (tmp_path / 'fresh').exists()  # neither cells nor sweep.json


@pytest.mark.slow
def test_importing_the_results_of_another_base_config_is_refused_naming_the_field(finished, tmp_path):
  folder = results_folder(finished[0], tmp_path)
  config = base_config()
  config.learning_rate = 0.05
  with pytest.raises(sweep.ResultsImportError, match=r'learning_rate: 0\.1 there, 0\.05 now.*import them with that'):
    sweep.import_results(config, sweep.make_grid(CRITERIA, SPARSITIES, SEEDS), folder, tmp_path / 'fresh')
  assert not (tmp_path / 'fresh').exists()


@pytest.mark.slow
def test_cli_import_of_a_folder_without_results_is_one_error_line_and_leaves_no_workdir(tmp_path):
  done = run_python('sweep.py', '--config=configs/default.py', '--config.num_epochs=1', '--config.lr_milestones=()',
                    f'--criteria={CRITERIA}', f'--sparsities={SPARSITIES}', '--seeds=1',
                    f'--workdir={tmp_path / "sweep"}', f'--import_results={tmp_path}', '--print_commands')
  assert done.returncode == 2
  errors = [line for line in done.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and 'needs both sweep.json and results.jsonl' in errors[0]
  assert not (tmp_path / 'sweep').exists()  # a refused import leaves no empty workdir behind


@pytest.mark.slow
def test_a_row_is_imported_with_its_recorded_config_even_one_written_before_a_field_was_added(finished, tmp_path):
  """A later version adds config fields (bytes change, hash changes); the folder's own config.json proves the row."""
  workdir, _ = finished
  folder = results_folder(workdir, tmp_path)
  rows = results_rows(folder)
  recorded = json.loads((workdir / rows[2]['cell'] / 'config.json').read_text())
  assert recorded.pop('deterministic') is False  # as an older version wrote it
  old_text = json.dumps(recorded, indent=2) + '\n'
  (folder / rows[2]['cell']).mkdir(parents=True)
  (folder / rows[2]['cell'] / 'config.json').write_text(old_text)
  rows[2]['config_hash'] = hashlib.sha256(old_text.encode()).hexdigest()[:12]
  (folder / 'results.jsonl').write_text(''.join(json.dumps(row) + '\n' for row in rows))
  fresh = tmp_path / 'fresh'
  assert sweep.import_results(base_config(), sweep.make_grid(CRITERIA, SPARSITIES, SEEDS), folder, fresh).imported == CELLS
  sweep.aggregate(fresh, with_figure=False)
  assert results_rows(fresh) == rows
  (folder / rows[2]['cell'] / 'config.json').write_text(old_text.replace('"learning_rate": 0.1', '"learning_rate": 0.2'))
  rows[2]['config_hash'] = hashlib.sha256((folder / rows[2]['cell'] / 'config.json').read_bytes()).hexdigest()[:12]
  (folder / 'results.jsonl').write_text(''.join(json.dumps(row) + '\n' for row in rows))
  with pytest.raises(sweep.ResultsImportError, match=r'row 3 .* was trained with other learning_rate'):
    sweep.import_results(base_config(), sweep.make_grid(CRITERIA, SPARSITIES, SEEDS), folder, tmp_path / 'other')
