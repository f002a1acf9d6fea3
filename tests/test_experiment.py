"""The experiment harness end to end: prune.py, the configs, resume after a kill."""

import json
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

import prospr_jax
from prospr_jax.harness import experiment

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_script(*args, timeout=600):
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_prune_py_on_the_default_config_writes_mask_report_plots_and_metrics(tmp_path):
  done = run_script('prune.py', '--config=configs/default.py', '--config.num_epochs=2',
                    '--config.lr_milestones=()', f'--workdir={tmp_path}')
  assert done.returncode == 0, done.stderr[-3000:]
  for name in ('mask.npz', 'sparsity_report.json', 'sparsity_report.txt', 'layer_density.png', 'pruning.json',
               'results.json', 'pruned/metrics.jsonl', 'pruned/learning_curves.png', 'dense/metrics.jsonl'):
    assert (tmp_path / name).exists(), name
  report = json.loads((tmp_path / 'sparsity_report.json').read_text())
  assert report['density'] == pytest.approx(0.1, abs=1e-4)
  rows = [json.loads(line) for line in (tmp_path / 'pruned/metrics.jsonl').read_text().splitlines()]
  assert [row['epoch'] for row in rows] == [1, 2] and {'train_loss', 'eval_top1', 'eval_top5'} <= set(rows[0])
  assert 'network' in done.stdout and 'dense' in done.stdout and 'prospr' in done.stdout


@pytest.mark.slow
def test_zero_epochs_stops_after_pruning(tmp_path):
  from configs import default
  config = default.get_config()
  config.num_epochs = 0
  experiment.prune_and_train(config, tmp_path)
  assert (tmp_path / 'mask.npz').exists() and not (tmp_path / 'pruned').exists()


@pytest.mark.slow
def test_cifar10_vgg16_runlocal_prunes_and_trains_one_step_on_mock_data(tmp_path):
  from configs import cifar10_vgg16
  config = cifar10_vgg16.get_config('runlocal')
  with tfds.testing.mock_data(num_examples=8):
    results = experiment.prune_and_train(config, tmp_path)
  assert (tmp_path / 'mask.npz').exists() and (tmp_path / 'layer_density.png').exists()
  assert results['pruned']['epoch'] == 1 and results['pruned']['step'] == 1
  assert json.loads((tmp_path / 'sparsity_report.json').read_text())['total'] == 14_715_584  # 13 conv kernels + the dense kernel


def a_committed_checkpoint_past(directory, step):
  if not directory.exists():
    return False
  return any(p.name.isdigit() and int(p.name) >= step for p in directory.iterdir())


def final_params(workdir):
  manager = ocp.CheckpointManager(workdir / 'checkpoints')
  restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return restored['state']['params']


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_and_ends_bit_identical_to_an_uninterrupted_run(tmp_path):
  args = ['train.py', '--config=configs/default.py', '--config.num_epochs=3', '--config.lr_milestones=()',
          '--config.checkpoint_every_steps=5']
  killed, clean = tmp_path / 'killed', tmp_path / 'clean'
  process = subprocess.Popen([sys.executable, *args, f'--workdir={killed}'], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not a_committed_checkpoint_past(killed / 'checkpoints', 25) and time.time() < deadline:
    assert process.poll() is None, 'the run ended before it could be killed'
    time.sleep(0.2)
  process.send_signal(signal.SIGKILL)
  process.wait()
  last_before_kill = max(int(p.name) for p in (killed / 'checkpoints').iterdir() if p.name.isdigit())
  assert last_before_kill < 66  # 3 epochs of 22 steps: it really was cut short

  resumed = run_script(*args, f'--workdir={killed}')
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'Resumed from the checkpoint at step {last_before_kill}' in resumed.stderr
  uninterrupted = run_script(*args, f'--workdir={clean}')
  assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
  jax.tree.map(np.testing.assert_array_equal, final_params(killed), final_params(clean))
  rows = [json.loads(line) for line in (killed / 'metrics.jsonl').read_text().splitlines()]
  assert [row['epoch'] for row in rows] == [1, 2, 3]


@pytest.mark.parametrize('override, message', [
    ('--config.prune.sparsity=1.5', r'config.prune.sparsity must be in \[0, 1\)'),
    *(pytest.param(*case, marks=pytest.mark.slow) for case in (
        ('--config.criterion=obd', 'config.criterion=.obd.: valid names are force, grasp, grasp_mb'),
        ('--config.distribution=erdos', 'config.distribution=.erdos.: valid names are erk, global, uniform'),
        ('--config.ablation=flip', 'config.ablation=.flip.: valid names are invert, none, reinit, shuffle'),
        ('--config.model=vgg17', 'config.model=.vgg17.: valid names'),
        ('--config.prune.streamed=True', 'streamed needs'))),
])
def test_prune_py_refuses_a_bad_config_with_a_message_and_no_traceback(tmp_path, override, message):
  import re
  done = run_script('prune.py', '--config=configs/default.py', override, f'--workdir={tmp_path}')
  assert done.returncode == 2 and re.search(message, done.stderr) and 'Traceback' not in done.stderr


@pytest.mark.parametrize('criterion', [c if c in ('prospr', 'snip') else pytest.param(c, marks=pytest.mark.slow)
                                       for c in sorted(prospr_jax.CRITERIA)])
def test_every_registered_criterion_prunes_the_default_config(tmp_path, criterion):
  from configs import default
  config = default.get_config()
  config.criterion, config.num_epochs = criterion, 0
  config.prune.update(sparsity=0.95, num_steps=1, batch_size=16, rounds=3)
  if prospr_jax.get_criterion(criterion).structured_only:  # 3SP: channels, costed by the FLOPs each one saves
    config.prune.update(structured=True, keep_one_per_layer=True, compact=False)
  experiment.prune_and_train(config, tmp_path)
  report = json.loads((tmp_path / 'sparsity_report.json').read_text())
  assert report['criterion'] == criterion and report['kept'] == int(np.ceil(report['total'] * 0.05 - 1e-9))


@pytest.mark.parametrize('distribution, ablation', [('erk', 'none'), ('uniform', 'shuffle'), ('global', 'invert'),
                                                    ('global', 'reinit')])
@pytest.mark.slow
def test_distribution_and_ablation_are_chosen_by_name_and_recorded(tmp_path, distribution, ablation):
  from configs import default
  config = default.get_config()
  config.num_epochs, config.lr_milestones = (1 if ablation == 'reinit' else 0), ()
  config.compare_dense = False
  config.distribution, config.ablation = distribution, ablation
  config.prune.update(num_steps=1, batch_size=16)
  experiment.prune_and_train(config, tmp_path)
  report = json.loads((tmp_path / 'sparsity_report.json').read_text())
  assert (report['distribution'], report['ablation']) == (distribution, ablation)
  assert f'distribution {distribution}, ablation {ablation}' in (tmp_path / 'sparsity_report.txt').read_text()


def structured_config(**overrides):
  from configs import default
  config = default.get_config()
  config.num_epochs, config.lr_milestones, config.compare_dense = 1, (), False
  config.prune.update(structured=True, sparsity=0.5, num_steps=1, batch_size=16)
  config.update(overrides)
  return config


@pytest.mark.slow
def test_a_structured_run_compacts_trains_the_compact_network_reports_its_cost_and_resumes(tmp_path, caplog):
  caplog.set_level('INFO', logger='prospr_jax')
  results = experiment.prune_and_train(structured_config(), tmp_path)
  assert 'epoch 1, compact network (prospr at 50.0% channel sparsity): {' in caplog.text  # names what it trains
  assert results['kept_channels'] == 48 and results['channel_sparsity'] == 0.5 and results['pruned']['step'] == 22
  mask = {name: np.asarray(m) for name, m in np.load(tmp_path / 'mask.npz').items()}
  model, variables = prospr_jax.load_compact(tmp_path)  # the weights training started from
  assert model.widths == (int(mask['Conv_0/kernel'].sum()), int(mask['Conv_1/kernel'].sum()))
  trained = final_params(tmp_path / 'pruned')
  jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), trained, variables['params'])
  same_model, exported = prospr_jax.load_compact(tmp_path, trained=True)
  assert same_model == model and set(exported) == {'params', 'batch_stats'}
  jax.tree.map(np.testing.assert_array_equal, exported['params'], trained)
  assert not np.array_equal(exported['params']['Conv_0']['kernel'], variables['params']['Conv_0']['kernel'])
  costs = json.loads((tmp_path / 'compaction.json').read_text())
  assert costs['compact']['flops_per_example'] < 0.5 * costs['dense']['flops_per_example']
  assert costs['compact']['parameters'] < costs['dense']['parameters']
  assert {'train_step_seconds', 'images_per_second', 'peak_bytes', 'latency_batch_1_seconds',
          'latency_batch_128_seconds'} <= set(costs['compact'])
  caplog.set_level('INFO', logger='prospr_jax')
  again = experiment.prune_and_train(structured_config(num_epochs=2), tmp_path)
  assert 'Resumed from the checkpoint at step 22' in caplog.text and again['pruned']['step'] == 44
  _, exported = prospr_jax.load_compact(tmp_path, trained=True)  # rewritten after the resumed training
  jax.tree.map(np.testing.assert_array_equal, exported['params'], final_params(tmp_path / 'pruned'))


@pytest.mark.slow
def test_load_compact_trained_says_when_the_run_trained_nothing_and_train_py_exports_the_trained_ones(tmp_path):
  experiment.prune_and_train(structured_config(num_epochs=0), tmp_path / 'prune')
  prospr_jax.load_compact(tmp_path / 'prune')
  with pytest.raises(FileNotFoundError, match='no trained compact variables.*num_epochs=0'):
    prospr_jax.load_compact(tmp_path / 'prune', trained=True)
  experiment.train_and_evaluate(structured_config(mask_path=str(tmp_path / 'prune' / 'mask.npz')), tmp_path / 'train')
  _, exported = prospr_jax.load_compact(tmp_path / 'train', trained=True)
  jax.tree.map(np.testing.assert_array_equal, exported['params'], final_params(tmp_path / 'train'))


def test_train_py_trains_the_dense_network_under_a_structured_config(tmp_path):
  result = experiment.train_and_evaluate(structured_config(num_epochs=0), tmp_path)
  assert 0 <= result['eval_top1'] <= 1 and not (tmp_path / 'compact.json').exists()


@pytest.mark.slow
def test_train_py_trains_a_structured_mask_masked_at_full_width_with_dead_channels_exactly_zero(tmp_path):
  config = structured_config(num_epochs=0)
  config.prune.compact = False
  experiment.prune_and_train(config, tmp_path / 'prune')
  config = structured_config(mask_path=str(tmp_path / 'prune' / 'mask.npz'))
  config.prune.compact = False
  experiment.train_and_evaluate(config, tmp_path / 'train')
  params = final_params(tmp_path / 'train')
  dead = ~np.load(tmp_path / 'prune' / 'mask.npz')['Conv_1/kernel']
  assert dead.any() and not (tmp_path / 'train' / 'compact.json').exists()
  for layer, key in (('Conv_1', 'kernel'), ('BatchNorm_1', 'scale'), ('BatchNorm_1', 'bias')):
    assert not np.asarray(params[layer][key])[..., dead].any()
  assert not np.asarray(params['Dense_0']['kernel'])[dead].any()
