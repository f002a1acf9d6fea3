"""Fault injection: a workdir never reports another run's result, and every interruption resumes bit for bit.

Each test reproduces one way a run used to end with a wrong number or a lost
workdir (issue 11): reused workdirs, masks that do not cover the model,
divergence, concurrent runs, SIGKILL at every stage.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import prospr_jax
from configs import default
from prospr_jax import experiment, faults, trainer, workdir as workdir_lib
from test_experiment import ROOT, final_params


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
  with pytest.raises(trainer.TrainingDiverged, match=r'(loss became (nan|inf)|parameters became NaN or infinite) at step \d+ .*learning_rate=1000000.0'):
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
    assert (tmp_path / '.lock').read_text() == str(os.getpid())
  assert not (tmp_path / '.lock').exists()


# 8. Structured runs show channel and weight sparsity, labelled.

def test_the_table_of_a_structured_run_shows_weight_and_channel_sparsity():
  config = small_config(**{'prune.structured': True, 'prune.sparsity': 0.5})
  row = {'eval_top1': 0.9, 'eval_top5': 1.0}
  table = experiment.format_results(config, {'criterion': 'prospr', 'weight_sparsity': 0.62, 'pruned': row})
  assert 'weights' in table and 'channels' in table and '62.0%' in table and '50.0%' in table


# 7, and kill -9 everywhere: each rerun continues; the end is bit-identical to an uninterrupted run.

def run_prune(workdir, kill_at=None):
  env = dict(os.environ)
  env.pop(faults.ENV, None)
  if kill_at:
    env[faults.ENV] = kill_at
  args = ['prune.py', '--config=configs/default.py', '--config.num_epochs=2', '--config.lr_milestones=()',
          '--config.compare_dense=False', '--config.prune.num_steps=1', f'--workdir={workdir}']
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


def test_sigkill_at_every_stage_then_rerun_ends_bit_identical_to_an_uninterrupted_run(tmp_path):
  killed, clean = tmp_path / 'killed', tmp_path / 'clean'
  for point in ('scoring', 'pruning_files', 'training:30', 'checkpoint_save:44'):
    done = run_prune(killed, kill_at=point)
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
  from prospr_jax import entry
  assert str(entry.default_workdir('configs/cifar10_vgg16.py:runlocal', 'prune_and_train')) == \
      'workdir/cifar10_vgg16_runlocal'
  assert str(entry.default_workdir('configs/cifar10_vgg16.py', 'prune_and_train')) == 'workdir/cifar10_vgg16'


def test_start_over_empties_the_workdir_but_not_under_a_live_run(tmp_path):
  from prospr_jax import entry
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
  from prospr_jax import validation
  with pytest.raises(validation.ConfigError, match=message):
    validation.validate_config(small_config(**overrides))


def test_a_batch_larger_than_the_dataset_is_refused_before_pruning(tmp_path):
  from prospr_jax import validation
  with pytest.raises(validation.ConfigError, match='batch_size=4096 is more than the 1438 training records'):
    experiment.prune_and_train(small_config(batch_size=4096), tmp_path)
  assert not (tmp_path / 'mask.npz').exists()


def test_nan_in_the_pruning_batches_is_blamed_on_the_data_not_on_inner_lr():
  from prospr_jax import pruning, sharding
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


def test_an_unset_field_may_be_absent_from_an_older_workdir_but_a_set_one_is_refused(tmp_path):
  recorded = small_config().to_dict()
  recorded.pop('conv_column_mib')  # a workdir made before the field existed
  (tmp_path / 'config.json').write_text(json.dumps(recorded))
  workdir_lib.check_config(tmp_path, small_config())  # unset: the run it records ran the same way
  with pytest.raises(workdir_lib.WorkdirError, match='conv_column_mib'):
    workdir_lib.check_config(tmp_path, small_config(conv_column_mib=64.0))
