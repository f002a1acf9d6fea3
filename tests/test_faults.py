"""Fault injection: a workdir never reports another run's result, and every interruption resumes bit for bit.

Each test reproduces one way a run used to end with a wrong number or a lost
workdir (issue 11): reused workdirs, masks that do not cover the model,
divergence, concurrent runs, SIGKILL at every stage.
"""

import json
import os
import socket
import subprocess
import sys
import types

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_experiment import ROOT, final_params

import prospr_jax
from configs import default
from prospr_jax.harness import experiment, reports, train_loop
from prospr_jax.harness.records import PruneSpec
from prospr_jax.harness.setup import make_setup
from prospr_jax.runtime import faults, workdir as workdir_lib


def small_config(**overrides):
  config = default.get_config()
  config.num_epochs, config.lr_milestones = 0, ()  # no learning-rate drop in the few epochs a test trains
  config.compare_dense = False
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split('.')
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


# 1, 3. A workdir records its config; a different one is refused, naming the fields.

def test_a_rerun_with_another_sparsity_is_refused_naming_the_field(tmp_path):
  workdir_lib.check_config(tmp_path, small_config())
  with pytest.raises(workdir_lib.WorkdirError, match=r'prune.sparsity: 0.9 there, 0.5 now.*another --workdir'):
    workdir_lib.check_config(tmp_path, small_config(**{'prune.sparsity': 0.5}))


@pytest.mark.parametrize('field, value', [('criterion', 'snip'), ('seed', 1), ('model', 'vgg11'),
                                          ('distribution', 'erk'), ('learning_rate', 0.05),
                                          ('mask_path', 'other/mask.npz')])
def test_mask_and_training_defining_fields_cannot_change(tmp_path, field, value):
  workdir_lib.check_config(tmp_path, small_config())
  with pytest.raises(workdir_lib.WorkdirError, match=field):
    workdir_lib.check_config(tmp_path, small_config(**{field: value}))


def test_more_epochs_and_how_to_run_fields_may_change_fewer_epochs_may_not(tmp_path):
  workdir_lib.check_config(tmp_path, small_config(num_epochs=2))
  workdir_lib.check_config(tmp_path, small_config(num_epochs=3, worker_count=2, eval_batch_size=64))
  assert json.loads((tmp_path / 'config.json').read_text())['num_epochs'] == 3
  with pytest.raises(workdir_lib.WorkdirError, match='num_epochs .lowered from 3 to 1'):
    workdir_lib.check_config(tmp_path, small_config(num_epochs=1))


def test_results_without_a_recorded_config_are_not_reused(tmp_path):
  (tmp_path / 'mask.npz').write_bytes(b'')
  with pytest.raises(workdir_lib.WorkdirError, match='no config.json'):
    workdir_lib.check_config(tmp_path, small_config())


def test_prune_and_train_refuses_to_label_an_old_mask_with_a_new_criterion(tmp_path):
  experiment.prune_and_train(small_config(criterion='magnitude'), tmp_path)
  with pytest.raises(workdir_lib.WorkdirError, match="criterion: 'magnitude' there, 'snip' now"):
    experiment.prune_and_train(small_config(criterion='snip'), tmp_path)


# 2. A mask must cover the model: every prunable layer, its exact shape, only 0/1.

@pytest.fixture(scope='module')
def saved_mask(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('pruned')
  experiment.prune_and_train(small_config(criterion='magnitude'), workdir)
  return workdir / 'mask.npz'


def rewrite(path, out, change):
  with np.load(path) as saved:
    arrays = {name: saved[name] for name in saved.files}
  np.savez(out, **change(arrays))
  return out


@pytest.mark.parametrize('change, message', [
    (lambda a: {}, 'holds no layer'),
    (lambda a: {k: v for k, v in a.items() if k != 'Conv_1/kernel'}, 'missing Conv_1/kernel'),
    (lambda a: {k: v * 0.37 for k, v in a.items()}, 'values other than 0 and 1'),
    (lambda a: {**a, 'Conv_1/kernel': a['Conv_1/kernel'][..., :10]}, 'Conv_1/kernel has shape'),
    (lambda a: {**a, 'Head/kernel': a['Dense_0/kernel']}, 'not parameters of this model'),
])
def test_train_py_refuses_a_mask_that_does_not_cover_the_model(tmp_path, saved_mask, change, message):
  bad = rewrite(saved_mask, tmp_path / 'bad.npz', change)
  with pytest.raises(ValueError, match=message):
    experiment.train_and_evaluate(small_config(mask_path=str(bad)), tmp_path / 'run')


def not_a_zip(folder):
  (folder / 'x.npz').write_text('not a zip')
  return folder / 'x.npz'


def an_npy(folder):
  np.save(folder / 'x.npy', np.ones(3))
  return folder / 'x.npy'


@pytest.mark.parametrize('make, message', [
    (lambda d: d / 'missing.npz', 'does not exist'),
    (lambda d: d, 'is a folder'),
    (not_a_zip, 'not a readable .npz'),
    (an_npy, 'not a readable .npz'),
])
def test_a_mask_path_that_is_no_mask_file_says_so(tmp_path, make, message):
  with pytest.raises((ValueError, FileNotFoundError), match=message):
    prospr_jax.load_masks(make(tmp_path), {'w': jnp.ones((2, 2))})


def test_train_py_logs_the_mask_density_and_trains_a_valid_mask(tmp_path, saved_mask, caplog):
  caplog.set_level('INFO', logger='prospr_jax')
  experiment.train_and_evaluate(small_config(mask_path=str(saved_mask)), tmp_path)
  assert 'Training with 10.00% of the prunable weights' in caplog.text and 'Conv_1/kernel' in caplog.text


# 4. Divergence stops the run, names the step, keeps the last good checkpoint; JSON stays JSON.

def test_a_diverging_run_stops_at_the_first_non_finite_loss_and_writes_no_checkpoint_after_it(tmp_path):
  config = small_config(num_epochs=3, learning_rate=1e6, checkpoint_every_steps=1, mask_path='')
  with pytest.raises(train_loop.TrainingDiverged, match=r'(loss became (nan|inf)|parameters became NaN or infinite) at step \d+ .*learning_rate=1000000.0'):
    experiment.train_and_evaluate(config, tmp_path)
  steps = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit())
  rows = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()] if (
      tmp_path / 'metrics.jsonl').exists() else []
  assert all(np.isfinite(row['train_loss']) for row in rows)
  restored = final_params(tmp_path) if steps else {}
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored))


def test_every_json_file_is_strict_json(tmp_path):
  from prospr_jax import files
  files.write_json(tmp_path / 'x.json', {'a': float('nan'), 'b': [float('inf'), 1.0]})
  assert json.loads((tmp_path / 'x.json').read_text(), parse_constant=lambda c: 1 / 0) == {'a': None,
                                                                                          'b': [None, 1.0]}


# 5. One run per workdir.

def test_a_second_run_on_a_workdir_in_use_is_refused_with_the_pid(tmp_path):
  holder = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  try:
    (tmp_path / '.lock').write_text(str(holder.pid))
    with pytest.raises(workdir_lib.WorkdirError, match=f'in use by pid {holder.pid}'):
      with workdir_lib.locked(tmp_path):
        pass
  finally:
    holder.kill()
    holder.wait()
  with workdir_lib.locked(tmp_path):  # the holder is dead: its lock is stale and taken over
    assert (tmp_path / '.lock').read_text() == f'{os.getpid()} {socket.gethostname()}'
  assert not (tmp_path / '.lock').exists()


# 8. Structured runs show channel and weight sparsity, labelled.

def test_the_table_of_a_structured_run_shows_weight_and_channel_sparsity():
  config = small_config(**{'prune.structured': True, 'prune.sparsity': 0.5})
  row = {'eval_top1': 0.9, 'eval_top5': 1.0}
  table = reports.format_results(PruneSpec.of(config), 'small_cnn on digits', 2,
                                 {'criterion': 'prospr', 'weight_sparsity': 0.62, 'pruned': row})
  assert 'weights' in table and 'channels' in table and '62.0%' in table and '50.0%' in table


# 7, and kill -9 everywhere: each rerun continues; the end is bit-identical to an uninterrupted run.

def run_prune(workdir, kill_at=None, signal_name=None):
  env = dict(os.environ)
  env.pop(faults.ENV, None)
  env.pop(faults.SIGNAL_ENV, None)
  if kill_at:
    env[faults.ENV] = kill_at
  if signal_name:
    env[faults.SIGNAL_ENV] = signal_name
  args = ['prune.py', '--config=configs/default.py', '--config.num_epochs=2', '--config.lr_milestones=()',
          '--config.compare_dense=False', '--config.prune.num_steps=1', f'--workdir={workdir}']
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_sigkill_at_every_stage_and_sigterm_mid_epoch_then_rerun_end_bit_identical_to_an_uninterrupted_run(tmp_path):
  """SIGTERM (preemption) at step 33 saves a checkpoint there, mid-epoch, and exits 143 with one line; the rerun
  reports epoch 2 over all its steps, as the uninterrupted run does (the strip below compares the train loss)."""
  killed, clean = tmp_path / 'killed', tmp_path / 'clean'
  for point, signal_name in (('scoring', None), ('pruning_files', None), ('training:30', None),
                             ('training:33', 'SIGTERM'), ('checkpoint_save:44', None)):
    done = run_prune(killed, kill_at=point, signal_name=signal_name)
    if signal_name == 'SIGTERM':
      checkpoints = killed / 'pruned' / 'checkpoints'
      assert done.returncode == 143 and 'Traceback' not in done.stderr, done.stderr[-2000:]
      assert [line for line in done.stderr.splitlines() if line.startswith('error: ')] == [
          f'error: stopped by SIGTERM (preempted?); rerun the same command to resume from the last checkpoint (step 33 '
          f'in {checkpoints}) (set PROSPR_JAX_TRACEBACK=1 for the traceback)']
      continue
    assert done.returncode == -9, (point, done.stderr[-2000:])
    if point == 'pruning_files':
      assert not (killed / 'mask.npz').exists()  # written last: the pruning step is whole or absent
  assert not list(killed.glob('**/.*.tmp'))  # no half-written file under a final name, no leftovers
  assert run_prune(killed).returncode == 0
  assert run_prune(clean).returncode == 0
  for name in ('mask.npz', 'scores.npz'):
    with np.load(killed / name) as a, np.load(clean / name) as b:
      assert all(np.array_equal(a[k], b[k]) for k in b.files)
  jax.tree.map(np.testing.assert_array_equal, final_params(killed / 'pruned'), final_params(clean / 'pruned'))
  strip = lambda path: [{k: v for k, v in json.loads(line).items() if k != 'images_per_second'}
                        for line in path.read_text().splitlines()]
  assert strip(killed / 'pruned/metrics.jsonl') == strip(clean / 'pruned/metrics.jsonl')


# 10, small things: refused before any work, each a one-line fix.

def test_a_variant_gets_its_own_default_workdir():
  from prospr_jax.harness import entry
  assert str(entry.default_workdir('configs/cifar10_vgg16.py:runlocal')) == \
      'workdir/cifar10_vgg16_runlocal'
  assert str(entry.default_workdir('configs/cifar10_vgg16.py')) == 'workdir/cifar10_vgg16'


def test_start_over_empties_the_workdir_but_not_under_a_live_run(tmp_path):
  from prospr_jax.harness import entry
  (tmp_path / 'mask.npz').write_text('old')
  (tmp_path / 'pruned').mkdir()
  entry.start_over(tmp_path)
  assert list(tmp_path.iterdir()) == []
  holder = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  try:
    (tmp_path / '.lock').write_text(str(holder.pid))
    (tmp_path / 'mask.npz').write_text('in use')
    with pytest.raises(workdir_lib.WorkdirError, match='in use by pid'):
      entry.start_over(tmp_path)
    assert (tmp_path / 'mask.npz').exists()
  finally:
    holder.kill()
    holder.wait()


@pytest.mark.parametrize('overrides, message', [
    ({'lr_milestones': ('abc',)}, 'lr_milestones must be epochs'),
    ({'prune.inner_lr': -0.1}, 'inner_lr must be positive'),
])
def test_bad_values_are_refused_before_any_work(overrides, message):
  from prospr_jax.harness import validation
  with pytest.raises(validation.ConfigError, match=message):
    validation.validate_config(small_config(**overrides))


def test_a_batch_larger_than_the_dataset_is_refused_before_pruning(tmp_path):
  from prospr_jax.harness import validation
  with pytest.raises(validation.ConfigError, match='batch_size=4096 is more than the 1438 training records'):
    experiment.prune_and_train(small_config(batch_size=4096), tmp_path)
  assert not (tmp_path / 'mask.npz').exists()


def test_nan_in_the_pruning_batches_is_blamed_on_the_data_not_on_inner_lr():
  from prospr_jax.harness import pruning
  from prospr_jax.runtime import sharding
  batches = iter([{'image': np.full((4, 8, 8, 1), np.nan, np.float32), 'label': np.zeros(4, np.int32)}] * 2)
  with pytest.raises(ValueError, match='pruning batches .* hold NaN or Inf: check the dataset'):
    pruning._stacked_global_batches(batches, 2, sharding.make_mesh())


def test_a_field_that_matters_only_with_another_may_be_absent_from_an_older_workdir(tmp_path):
  recorded = small_config().to_dict()
  recorded['prune'].pop('compact', None)  # a workdir made before compaction existed
  (tmp_path / 'config.json').write_text(json.dumps(recorded))
  workdir_lib.check_config(tmp_path, small_config())  # unstructured: compaction changes nothing
  with pytest.raises(workdir_lib.WorkdirError, match='prune.structured'):
    workdir_lib.check_config(tmp_path, small_config(**{'prune.structured': True}))


def test_a_workdir_recorded_with_a_separate_column_budget_reads_as_the_one_conv_impl_field(tmp_path):
  """conv_column_mib (a second field, unset or a budget) is folded into conv_impl: 'auto' + 64 is 'auto:64'."""
  recorded = small_config().to_dict()
  (tmp_path / 'config.json').write_text(json.dumps({**recorded, 'conv_column_mib': None}))
  workdir_lib.check_config(tmp_path, small_config())  # unset: the run it records ran the same way
  with pytest.raises(workdir_lib.WorkdirError, match='conv_impl'):
    workdir_lib.check_config(tmp_path, small_config(conv_impl='auto:64'))
  (tmp_path / 'config.json').write_text(json.dumps({**recorded, 'conv_column_mib': 64.0}))
  workdir_lib.check_config(tmp_path, small_config(conv_impl='auto:64'))
  with pytest.raises(workdir_lib.WorkdirError, match='conv_impl'):
    workdir_lib.check_config(tmp_path, small_config())


# Issue 31, 1. A sweep counts a cell only when its recorded config is the sweep's cell config.

def recorded_sweep(workdir, criteria='magnitude'):
  from prospr_jax import sweep
  from prospr_jax.sweep import record
  config = small_config(num_epochs=2)
  grid = sweep.make_grid(criteria, '0.5', 1)
  record.record_sweep(workdir, config, grid)
  return config, grid


def write_finished_cell(workdir, cell, config, top1=0.6):
  """The files a finished run leaves in a cell folder: its recorded config, then its results."""
  from prospr_jax import files
  cell_dir = cell.directory(workdir)
  cell_dir.mkdir(parents=True)
  files.write_json(cell_dir / 'config.json', config.to_dict())
  final = {'eval_top1': top1, 'eval_top5': 0.9}
  files.write_json(cell_dir / 'results.json', {'criterion': cell.criterion, 'sparsity': cell.sparsity,
                                               'weight_sparsity': cell.sparsity, 'kept_weights': 10,
                                               'dense' if cell.is_dense else 'pruned': final})


def test_a_sweep_refuses_a_cell_trained_with_another_config_naming_the_cell_and_the_field(tmp_path):
  from prospr_jax import sweep
  from prospr_jax.sweep import cells as cells_lib
  config, _ = recorded_sweep(tmp_path)
  cell = sweep.Cell('magnitude', 0.5, 0)
  other = sweep.cell_config(config, cell)
  other.learning_rate = 0.05
  write_finished_cell(tmp_path, cell, other)
  refusal = r'magnitude at 50.0% sparsity, seed 0: .*seed_0 holds a run of another config .*learning_rate: 0.05 there'
  with pytest.raises(cells_lib.ForeignCellError, match=refusal):
    sweep.aggregate(tmp_path, with_figure=False)
  with pytest.raises(cells_lib.ForeignCellError, match=refusal):
    sweep.run_sweep(config, 'magnitude', '0.5', 1, tmp_path)
  assert not sweep.Cell('dense', 0.0, 0).directory(tmp_path).exists()  # refused before any cell ran


def test_a_cell_trained_for_fewer_epochs_is_unfinished_so_it_is_not_aggregated_and_its_command_trains_it_on(tmp_path):
  """The repro: a 6-epoch sweep's dense cell run by hand for 1 epoch was tabulated as the 6-epoch number."""
  from prospr_jax import sweep
  config, grid = recorded_sweep(tmp_path)
  cell = sweep.Cell('dense', 0.0, 0)
  short = sweep.cell_config(config, cell)
  short.num_epochs = 1
  write_finished_cell(tmp_path, cell, short)
  sweep.aggregate(tmp_path, with_figure=False)
  assert (tmp_path / 'results.jsonl').read_text() == ''
  commands = sweep.pending_commands(config, grid, tmp_path, 'configs/default.py', [])
  assert any(command.endswith('--only_cell=dense,0.0,0') for command in commands)


# 2. Imported rows are checked by value: every key, accuracies in [0, 1], one row per cell.

def import_rows(tmp_path, rows, lines=None):
  from prospr_jax import sweep
  from prospr_jax.sweep import record
  folder = tmp_path / 'results'
  config, grid = recorded_sweep(folder, criteria='magnitude')
  text = ''.join(json.dumps(row) + '\n' for row in rows) if lines is None else lines
  (folder / 'results.jsonl').write_text(text)
  sweep.import_results(config, grid, folder, tmp_path / 'fresh')
  return record


GOOD_ROW = {'config_hash': '0' * 12, 'criterion': 'magnitude', 'sparsity': 0.5, 'seed': 0, 'kept_weights': 10,
            'weight_sparsity': 0.5, 'top1': 0.9, 'top5': 1.0, 'cell': 'cells/magnitude/sparsity_0.500/seed_0'}


@pytest.mark.parametrize('rows, lines, message', [
    ([{**GOOD_ROW, 'top1': None}], None, r'row 1 of .* has top1 None .*fractions in \[0, 1\]'),
    ([{**GOOD_ROW, 'top1': 97.0}], None, r'row 1 of .* has top1 97.0 '),
    ([GOOD_ROW, {**GOOD_ROW, 'top1': 0.5}], None, r'rows 1 and 2 of .* are both magnitude at 50.0% sparsity'),
    ([{k: v for k, v in GOOD_ROW.items() if k != 'top5'}], None, r'row 1 of .* lacks top5'),
    ([], '{"config_hash": "0", "crit\n', r'line 1 of .*results.jsonl is not valid JSON'),
], ids=['null top-1', 'top-1 in percent', 'duplicate cell', 'missing key', 'garbage line'])
def test_an_imported_row_with_a_bad_value_is_refused_naming_the_row_and_writes_nothing(tmp_path, rows, lines, message):
  from prospr_jax import files
  from prospr_jax.sweep import imported
  with pytest.raises((imported.ResultsImportError, files.UnreadableFileError), match=message):
    import_rows(tmp_path, rows, lines)
  assert not (tmp_path / 'fresh').exists()


# 3. A resumed epoch reports the whole epoch.

@pytest.mark.slow
def test_a_run_resumed_mid_epoch_writes_the_rows_of_an_uninterrupted_run(tmp_path, monkeypatch):
  config = small_config(num_epochs=1, checkpoint_every_steps=5, mask_path='')
  experiment.train_and_evaluate(config, tmp_path / 'clean')

  def stop_at_step_8(name, step=None):
    if name == 'training' and step == 8:
      raise KeyboardInterrupt
  monkeypatch.setattr(faults, 'point', stop_at_step_8)
  with pytest.raises(KeyboardInterrupt):
    experiment.train_and_evaluate(config, tmp_path / 'stopped')
  monkeypatch.undo()
  experiment.train_and_evaluate(config, tmp_path / 'stopped')  # resumes from step 5, mid-epoch
  strip = lambda path: [{k: v for k, v in json.loads(line).items() if k != 'images_per_second'}
                        for line in (path / 'metrics.jsonl').read_text().splitlines()]
  assert strip(tmp_path / 'stopped') == strip(tmp_path / 'clean')


# 7. A corrupt or unwritable file ends in one line naming it and the fix; a failed write leaves no temporary file.

def corrupt_results(workdir):
  from prospr_jax import sweep
  config, _ = recorded_sweep(workdir)
  cell = sweep.Cell('magnitude', 0.5, 0)
  write_finished_cell(workdir, cell, sweep.cell_config(config, cell))
  (cell.directory(workdir) / 'results.json').write_text('{"criterion": "magn')
  return cell.directory(workdir) / 'results.json', lambda: sweep.aggregate(workdir, with_figure=False)


def results_without_top1(workdir):
  path, aggregate = corrupt_results(workdir)
  path.write_text('{"criterion": "magnitude", "pruned": {}}')
  return path, aggregate


def corrupt_sweep_json(workdir):
  from prospr_jax import sweep
  recorded_sweep(workdir)
  (workdir / 'sweep.json').write_text('{"base_config": {}}')
  return workdir / 'sweep.json', lambda: sweep.aggregate(workdir, with_figure=False)


def corrupt_rewind_cache(workdir):
  from prospr_jax.sweep import after_training
  (workdir / after_training.REWIND_FILE).write_bytes(b'\x93garbage')
  setup = types.SimpleNamespace(variables={'params': {'w': np.zeros(2, np.float32)}})
  return workdir / after_training.REWIND_FILE, lambda: after_training.rewind_variables(None, setup, workdir, None)


def corrupt_compact_msgpack(workdir):
  from prospr_jax import files
  from prospr_jax.models import compaction
  files.write_json(workdir / compaction.COMPACT_FILE, {'model': 'small_cnn', 'num_classes': 10, 'model_kwargs': {}})
  (workdir / compaction.VARIABLES_FILE).write_bytes(b'\xc1\xc1')
  return workdir / compaction.VARIABLES_FILE, lambda: compaction.load_compact(workdir)


@pytest.mark.parametrize('corrupt', [corrupt_results, results_without_top1, corrupt_sweep_json, corrupt_rewind_cache,
                                     corrupt_compact_msgpack], ids=lambda corrupt: corrupt.__name__)
def test_a_corrupt_file_is_refused_in_one_line_naming_it_and_the_fix(tmp_path, corrupt):
  from prospr_jax.harness import entry
  path, read = corrupt(tmp_path)
  with pytest.raises(ValueError) as refused:
    read()
  message, code = entry.failure_of(refused.value, tmp_path)
  assert code == 2 and '\n' not in message and str(path) in message and ('delete' in message or 'restore' in message)


def test_a_corrupt_checkpoint_restored_by_step_is_one_line_naming_it(tmp_path):
  from prospr_jax.harness import entry
  from prospr_jax.runtime import checkpointing
  checkpointer = checkpointing.Checkpointer(tmp_path)
  checkpointer.save(3, {'w': jnp.ones(4)}, {'w': jnp.ones(4)}, {'epoch': 1})
  checkpointer.wait()
  for path in (tmp_path / '3').rglob('*'):
    if path.is_file():
      path.write_bytes(b'')
  with pytest.raises(checkpointing.CheckpointError) as refused:
    checkpointer.restore({'w': jnp.zeros(4)}, {'w': jnp.zeros(4)}, step=3)
  checkpointer.close()
  message, code = entry.failure_of(refused.value, tmp_path)
  assert code == 2 and '\n' not in message and f'Checkpoint {tmp_path / "3"} does not restore' in message


def test_an_unwritable_file_is_named_and_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
  import errno

  from prospr_jax import files
  (tmp_path / 'folder.json').mkdir()
  with pytest.raises(OSError):
    files.write_json(tmp_path / 'folder.json', {})  # the rename onto a folder fails after the write
  assert sorted(path.name for path in tmp_path.iterdir()) == ['folder.json']

  def read_only(self, data):
    raise OSError(errno.EROFS, 'Read-only file system')
  monkeypatch.setattr(type(files.epath.Path(tmp_path)), 'write_bytes', read_only)
  with pytest.raises(PermissionError, match=f'{tmp_path / "table.md"} cannot be written .Read-only file system.'):
    files.write_text(tmp_path / 'table.md', '')


def test_a_checkpoint_the_disk_has_no_room_for_is_refused_before_orbax_writes_any_of_it(tmp_path, monkeypatch):
  import collections

  from prospr_jax.harness import entry
  from prospr_jax.runtime import checkpointing
  checkpointer = checkpointing.Checkpointer(tmp_path)
  usage = collections.namedtuple('usage', 'total used free')
  monkeypatch.setattr(checkpointing.shutil, 'disk_usage', lambda path: usage(2**30, 2**30, 1000))
  with pytest.raises(OSError) as refused:
    checkpointer.save(1, {'w': jnp.ones(4)}, {'w': jnp.ones(4)}, {'epoch': 1})
  checkpointer.close()
  message, code = entry.failure_of(refused.value, tmp_path)
  assert code == 1 and message.startswith(f'the disk is full (writing {tmp_path}: No space left')
  assert list(tmp_path.iterdir()) == []


# 8. The compact network's files belong to the recorded config.

def test_raising_num_epochs_deletes_the_old_ends_results_before_recording_the_new_config(tmp_path):
  from prospr_jax.models import compaction
  with experiment.claimed(small_config(num_epochs=1), tmp_path):
    for name in ('results.json', compaction.TRAINED_FILE):
      (tmp_path / name).write_text('of the 1-epoch run')
  with experiment.claimed(small_config(num_epochs=2), tmp_path):
    pass
  assert json.loads((tmp_path / 'config.json').read_text())['num_epochs'] == 2
  assert not (tmp_path / 'results.json').exists() and not (tmp_path / compaction.TRAINED_FILE).exists()


@pytest.mark.slow
def test_a_deleted_compact_variables_file_is_rewritten_and_one_of_other_shapes_is_refused(tmp_path):
  from prospr_jax import files
  from prospr_jax.models import compaction
  config = small_config(criterion='magnitude', **{'prune.structured': True, 'prune.sparsity': 0.5,
                                                  'prune.keep_one_per_layer': True})
  experiment.prune_and_train(config, tmp_path)
  (tmp_path / compaction.VARIABLES_FILE).unlink()
  experiment.prune_and_train(config, tmp_path)
  model, variables = prospr_jax.load_compact(tmp_path)
  wider = {**variables, 'params': {**variables['params'], 'Dense_0': {
      'kernel': np.zeros((99, 10), np.float32), 'bias': np.zeros(10, np.float32)}}}
  files.write_bytes(tmp_path / compaction.TRAINED_FILE, flax.serialization.msgpack_serialize(wider))
  with pytest.raises(ValueError, match=f'{tmp_path / compaction.TRAINED_FILE} does not fit the compact network'):
    prospr_jax.load_compact(tmp_path, trained=True)


# 9. Masks are saved as bool, and two leaves of one name are refused.

def test_a_bfloat16_mask_is_saved_as_bool_and_loads_back(tmp_path):
  params = {'w': jnp.ones((2, 2))}
  prospr_jax.save_masks(tmp_path / 'mask.npz', {'w': jnp.array([[1, 0], [0, 1]], jnp.bfloat16)})
  loaded = prospr_jax.load_masks(tmp_path / 'mask.npz', params)
  assert loaded['w'].dtype == bool and loaded['w'].tolist() == [[True, False], [False, True]]


def test_two_leaves_of_one_name_are_refused_not_saved_as_one_mask(tmp_path):
  with pytest.raises(ValueError, match='two leaves are both named a/b'):
    prospr_jax.save_masks(tmp_path / 'mask.npz', {'a/b': jnp.ones(2), 'a': {'b': jnp.zeros(2)}})
  assert not (tmp_path / 'mask.npz').exists()


# 10. The lock names its file and its host; a lock held on another host is never taken over.

def test_a_lock_refusal_names_the_lock_file(tmp_path):
  (tmp_path / '.lock').write_text('1')  # pid 1 lives on every host
  with pytest.raises(workdir_lib.WorkdirError, match=f'in use by pid 1 .lock file {tmp_path / ".lock"}.*delete'):
    with workdir_lib.locked(tmp_path):
      pass


def test_a_lock_of_another_host_is_refused_even_when_its_pid_is_dead_here(tmp_path):
  holder = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
  (tmp_path / '.lock').write_text(f'{holder.stdout.strip()} other-host')  # a pid that no longer runs here
  with pytest.raises(workdir_lib.WorkdirError, match=f'in use by pid {holder.stdout.strip()} on other-host'):
    with workdir_lib.locked(tmp_path):
      pass
  assert (tmp_path / '.lock').read_text() == f'{holder.stdout.strip()} other-host'


# 11. Smaller ones.

@pytest.mark.parametrize('model', ['lenet5', 'vgg16'])
def test_a_model_too_deep_for_the_input_is_refused_naming_the_input_size(model):
  from prospr_jax.harness import validation
  with pytest.raises(validation.ConfigError, match=f"config.model='{model}' is too deep for the 8x8x1 images of "
                                                   'digits: its output at Conv_.* is empty'):
    make_setup(small_config(model=model))


def test_all_and_more_criteria_together_name_every_one():
  from prospr_jax import sweep
  from prospr_jax.criteria import registry
  assert sweep.parse_criteria('all,lottery_rewind,snip') == (*registry.UNSTRUCTURED, 'lottery_rewind')


def test_a_sparsity_short_of_one_is_never_printed_as_100_percent():
  from prospr_jax import sparsity, sweep
  assert sparsity.percent(0.9999) == '99.99%' and sparsity.percent(0.9) == '90.0%' and sparsity.percent(0) == '0.0%'
  assert str(sweep.Cell('snip', 0.99999, 0)) == 'snip at 99.999% sparsity, seed 0'
  table = reports.format_results(PruneSpec.of(small_config()), 'small_cnn on digits', 2,
                                 {'weight_sparsity': 0.9999, 'pruned': {'eval_top1': 0.1, 'eval_top5': 0.5}})
  assert '99.99%' in table and '100.0%' not in table


def test_a_resumed_cells_time_counts_every_process_that_ran_it(tmp_path, monkeypatch):
  from prospr_jax import sweep
  from prospr_jax.sweep import cells as cells_lib
  config, _ = recorded_sweep(tmp_path)
  cell = sweep.Cell('magnitude', 0.5, 0)
  clock = iter([100.0, 130.0, 200.0, 210.0])  # a stopped process of 30 s, then one of 10 s
  monkeypatch.setattr(cells_lib, 'time', types.SimpleNamespace(perf_counter=lambda: next(clock)))

  def stopped(config, workdir):
    workdir.mkdir(parents=True)
    raise KeyboardInterrupt
  monkeypatch.setattr(cells_lib.experiment, 'prune_and_train', stopped)
  with pytest.raises(KeyboardInterrupt):
    cells_lib.run_cell(cell, config, tmp_path)
  monkeypatch.setattr(cells_lib.experiment, 'prune_and_train', lambda config, workdir: None)
  assert cells_lib.run_cell(cell, config, tmp_path) == 10.0
  assert json.loads((cell.directory(tmp_path) / 'cell.json').read_text()) == {
      'seconds': 40.0, 'ran_on': [cells_lib.environment()]}  # both processes ran here: one environment


@pytest.mark.slow
def test_labels_outside_the_classes_are_blamed_on_the_data_and_raw_uint8_images_are_refused():
  from nets import mlp_problem
  params, (x, y), loss_fn = mlp_problem()
  with pytest.raises(ValueError, match=r'labels \(integers in \[0, classes\)\), not inner_lr'):
    prospr_jax.prospr_saliency(params, (x, y + 1000), loss_fn=loss_fn)
  with pytest.raises(ValueError, match=r'inputs \(NaN, Inf\)'):
    prospr_jax.prospr_saliency(params, (x * np.nan, y), loss_fn=loss_fn)
  with pytest.raises(ValueError, match=r'the inputs are uint8 \(raw pixels\?\): convert them to floats'):
    prospr_jax.prospr_saliency(params, (x.astype(jnp.uint8), y), loss_fn=loss_fn)


def test_a_rows_emptied_layers_and_environment_survive_aggregation_and_import(tmp_path):
  """What a results row says of how it was computed (the layers its mask emptied, where it ran) is kept when the
  row moves to another machine with --import_results."""
  from prospr_jax import files, sweep
  from prospr_jax.sweep import cells as cells_lib
  config, grid = recorded_sweep(tmp_path / 'here')
  gpu = {'jax': '0.12.1', 'jaxlib': '0.12.1', 'backend': 'gpu', 'device': 'NVIDIA H100 80GB HBM3'}
  for cell in grid.cells():
    write_finished_cell(tmp_path / 'here', cell, sweep.cell_config(config, cell))
    files.write_json(cell.directory(tmp_path / 'here') / cells_lib.CELL_FILE, {'seconds': 3.0, 'ran_on': [gpu]})
  pruned = sweep.Cell('magnitude', 0.5, 0).directory(tmp_path / 'here')
  files.write_json(pruned / 'pruning.json', {'seconds': 1.0, 'emptied_layers': ['OptionABlock_7/Conv_1/kernel']})
  sweep.aggregate(tmp_path / 'here', with_figure=False)
  assert sweep.import_results(config, grid, tmp_path / 'here', tmp_path / 'there').imported == 2
  sweep.aggregate(tmp_path / 'there', with_figure=False)
  rows = {r['criterion']: r for r in (json.loads(line) for line in
                                      (tmp_path / 'there' / 'results.jsonl').read_text().splitlines())}
  assert rows['magnitude']['emptied_layers'] == ['OptionABlock_7/Conv_1/kernel'] and 'emptied_layers' not in rows['dense']
  assert rows['magnitude']['ran_on'] == rows['dense']['ran_on'] == [gpu]
