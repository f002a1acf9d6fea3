"""Device-resident data (``config.data_on_device``) and several steps per dispatch (``config.steps_per_dispatch``).

The data are a function of the seed and the step, so a chunk of K steps, a resumed run and an uninterrupted one
read the same batches and end with the same parameters, bit for bit.
"""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from test_experiment import ROOT, final_params
from test_faults import small_config

from prospr_jax import data
from prospr_jax.data import resident
from prospr_jax.harness import dispatch, experiment, seeds, train_loop, train_steps, validation
from prospr_jax.harness.records import Recipe, Running
from prospr_jax.harness.setup import make_setup
from prospr_jax.runtime import faults, sharding, workdir as workdir_lib

DIGITS = data.get_dataset_info('digits')


def resident_config(**overrides):
  return small_config(num_epochs=1, mask_path='', data_on_device=True, checkpoint_every_steps=5, **overrides)


def rows(workdir):
  return [{k: v for k, v in json.loads(line).items() if k != 'images_per_second'}
          for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


@functools.cache
def one_dispatch_run(tmp_root):
  """One epoch (22 steps, a checkpoint every 5), one step per dispatch: the reference the other runs are held to."""
  workdir = tmp_root / 'one_step_per_dispatch'
  experiment.train_and_evaluate(resident_config(steps_per_dispatch=1), workdir)
  return workdir


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  return one_dispatch_run(tmp_path_factory.mktemp('reference'))


def test_several_steps_per_dispatch_end_bit_identical_to_one_step_per_dispatch(tmp_path, reference):
  experiment.train_and_evaluate(resident_config(steps_per_dispatch=4), tmp_path)  # chunks of 4 and 1, and 2 at the end
  jax.tree.map(np.testing.assert_array_equal, final_params(tmp_path), final_params(reference))
  assert rows(tmp_path) == rows(reference)


@pytest.mark.slow
def test_a_resident_run_stopped_mid_chunk_resumes_bit_identical(tmp_path, reference, monkeypatch):
  def stop_at_step_12(name, step=None):  # in the chunk of steps 11-13, after the checkpoint at step 10
    if name == 'training' and step == 12:
      raise KeyboardInterrupt
  monkeypatch.setattr(faults, 'point', stop_at_step_12)
  config = resident_config(steps_per_dispatch=3)
  with pytest.raises(KeyboardInterrupt):
    experiment.train_and_evaluate(config, tmp_path)
  monkeypatch.undo()
  experiment.train_and_evaluate(config, tmp_path)
  jax.tree.map(np.testing.assert_array_equal, final_params(tmp_path), final_params(reference))
  assert rows(tmp_path) == rows(reference)


@pytest.mark.slow
def test_a_resident_run_killed_with_sigkill_at_a_checkpoint_save_resumes_bit_identical(tmp_path, reference):
  args = ['train.py', '--config=configs/default.py', '--config.num_epochs=1', '--config.lr_milestones=()',
          '--config.checkpoint_every_steps=5', '--config.data_on_device=True', '--config.steps_per_dispatch=8',
          f'--workdir={tmp_path}']
  env = {**os.environ, faults.ENV: 'checkpoint_save:22'}
  killed = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
  assert killed.returncode == -9, killed.stderr[-2000:]
  env.pop(faults.ENV)
  resumed = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
  assert resumed.returncode == 0 and 'Resumed from the checkpoint' in resumed.stderr, resumed.stderr[-2000:]
  jax.tree.map(np.testing.assert_array_equal, final_params(tmp_path), final_params(reference))
  assert rows(tmp_path) == rows(reference)


def batches_of(spec, key, steps, arrays):
  """Global batches ``steps``, each computed alone (its epoch's order recomputed)."""
  fn = jax.jit(lambda step: resident.train_batch(arrays, resident.epoch_order(key, step // spec.steps_per_epoch,
                                                                               spec), key, step, spec))
  return [jax.tree.map(np.asarray, fn(jnp.int32(s))) for s in steps]


@pytest.mark.parametrize('augmentation', ['none', 'crop_flip'])
def test_the_data_order_is_a_function_of_the_seed_and_the_step(augmentation):
  source = data.load_source('digits', 'train')
  spec = resident.Layout(len(source), 64, len(source) // 64, augmentation, DIGITS.mean, DIGITS.std)
  arrays = {'image': jnp.asarray(source.images), 'label': jnp.asarray(source.labels, jnp.int32)}
  key = seeds.device_data(0)
  first = batches_of(spec, key, range(spec.steps_per_epoch + 2), arrays)
  again = batches_of(spec, key, [3, spec.steps_per_epoch + 1], arrays)
  for a, b in zip(again, [first[3], first[-1]]):
    jax.tree.map(np.testing.assert_array_equal, a, b)
  other_seed = batches_of(spec, seeds.device_data(1), [3], arrays)[0]
  assert not np.array_equal(other_seed['label'], first[3]['label'])
  epoch_labels = np.concatenate([b['label'] for b in first[:spec.steps_per_epoch]])
  assert np.bincount(epoch_labels).sum() == spec.steps_per_epoch * 64  # each record at most once per epoch
  if augmentation == 'none':  # the records themselves, normalised as the host pipeline does
    order = np.asarray(resident.epoch_order(key, 0, spec))[:64]
    expected = data.transforms.Normalize(DIGITS.mean, DIGITS.std).map({'image': source.images[order], 'label': 0})
    np.testing.assert_allclose(first[0]['image'], expected['image'], rtol=1e-6, atol=1e-6)


def test_crop_flip_on_the_device_is_a_zero_padded_crop_flipped_or_not():
  images = jnp.arange(2 * 6 * 5 * 1, dtype=jnp.float32).reshape(2, 6, 5, 1) + 1
  out = np.asarray(resident.crop_flip(images, jax.random.key(3), padding=2))
  for image, result in zip(np.asarray(images), out):
    padded = np.pad(image, ((2, 2), (2, 2), (0, 0)))
    windows = [padded[t:t + 6, l:l + 5] for t in range(5) for l in range(5)]
    assert any(np.array_equal(result, w) or np.array_equal(result, w[:, ::-1]) for w in windows)


def test_evaluation_on_the_device_equals_the_host_evaluation():
  config = resident_config()
  setup = make_setup(config)
  recipe = Recipe.of(config)
  steps_per_epoch, compiled = train_loop.recipe_steps(recipe, setup)
  state = train_loop.initial_state(recipe, 0, setup, jax.tree.map(lambda _: None, setup.variables['params']))
  on_device = dispatch.make(recipe, Running.of(config), setup, steps_per_epoch, compiled, 0)
  host = dispatch.evaluate(state, setup, compiled[3], recipe.eval_batch_size)
  assert on_device.evaluate(state) == pytest.approx(host, rel=1e-6)
  assert float(sharding.host_value(train_steps.eval_resident(
      state, resident.put(setup.eval_source, setup.mesh), model=setup.model,
      spec=resident.layout(DIGITS, setup.eval_source, 100, 0, train=False),
      batch_sharding=sharding.data_sharded(setup.mesh))['count'])) == len(setup.eval_source)


def test_steps_per_dispatch_may_change_in_a_workdir_data_on_device_may_not(tmp_path):
  workdir_lib.check_config(tmp_path, small_config(num_epochs=2))
  workdir_lib.check_config(tmp_path, small_config(num_epochs=2, data_on_device=False, steps_per_dispatch=1))
  with pytest.raises(workdir_lib.WorkdirError, match='data_on_device'):
    workdir_lib.check_config(tmp_path, small_config(num_epochs=2, data_on_device=True))
  recorded = json.loads((tmp_path / 'config.json').read_text())
  for field in ('data_on_device', 'steps_per_dispatch'):  # a workdir recorded before the fields: the defaults
    recorded.pop(field)
  (tmp_path / 'config.json').write_text(json.dumps(recorded))
  workdir_lib.check_config(tmp_path, small_config(num_epochs=2))
  with pytest.raises(workdir_lib.WorkdirError, match='data_on_device'):
    workdir_lib.check_config(tmp_path, small_config(num_epochs=2, data_on_device=True))
  (tmp_path / 'resident').mkdir()
  workdir_lib.check_config(tmp_path / 'resident', resident_config(steps_per_dispatch=2))
  workdir_lib.check_config(tmp_path / 'resident', resident_config(steps_per_dispatch=16))


@pytest.mark.parametrize('overrides, message', [
    ({'steps_per_dispatch': 4}, 'set config.data_on_device=True'),
    ({'steps_per_dispatch': 0, 'data_on_device': True}, 'steps_per_dispatch must be >= 1'),
])
def test_bad_dispatch_settings_are_refused_naming_the_fix(overrides, message):
  with pytest.raises(validation.ConfigError, match=message):
    validation.validate_config(small_config(**overrides))


def test_a_set_with_host_only_augmentation_is_refused_on_the_device(tmp_path):
  assert 'runs on the host only' in resident.unsupported(data.get_dataset_info('imagenet2012'))
  assert not resident.unsupported(DIGITS) and not resident.unsupported(data.get_dataset_info('cifar10'))
  config = resident_config(dataset='imagenet2012', batch_size=2, eval_batch_size=2,
                           **{'prune.batch_size': 2})
  with pytest.raises(validation.ConfigError, match='cannot hold imagenet2012 on the device.*data_on_device=False'):
    validation.validate_config(config)  # before anything loads or compiles
  with tfds.testing.mock_data(num_examples=4), pytest.raises(validation.ConfigError, match='data_on_device=False'):
    experiment.train_and_evaluate(config, tmp_path)


@pytest.mark.slow
def test_cifar_from_tfds_trains_on_the_device_with_crop_and_flip(tmp_path):
  config = resident_config(dataset='cifar10', batch_size=8, eval_batch_size=8, steps_per_dispatch=2,
                           **{'prune.batch_size': 8})
  with tfds.testing.mock_data(num_examples=16):
    result = experiment.train_and_evaluate(config, tmp_path)
  assert result['step'] == 2 and np.isfinite(result['train_loss'])


def test_a_pruned_network_trains_alike_at_one_and_four_steps_per_dispatch_and_its_pruned_weights_stay_zero():
  config = resident_config(steps_per_dispatch=4)
  setup, recipe = make_setup(config), Recipe.of(config)
  rng = np.random.default_rng(0)
  mask = jax.tree.map(lambda p: rng.random(p.shape) > 0.9 if p.ndim > 1 else None, setup.variables['params'])
  steps_per_epoch, compiled = train_loop.recipe_steps(recipe, setup)

  def one_epoch(k):
    state = train_loop.initial_state(recipe, 0, setup, mask)
    feed = dispatch.make(recipe, Running.of(resident_config(steps_per_dispatch=k)), setup, steps_per_epoch, compiled,
                         0)
    step, losses = 0, []
    while step < steps_per_epoch:
      state, metrics, ran = feed.advance(state, step, steps_per_epoch)
      step += ran
      losses.append(np.atleast_1d(np.asarray(metrics['loss'])))
    return state, np.concatenate(losses), feed.evaluate(state)

  (one, one_losses, one_eval), (four, four_losses, four_eval) = one_epoch(1), one_epoch(4)
  assert np.array_equal(one_losses, four_losses) and one_eval == four_eval
  for a, b in zip(jax.tree.leaves((one.params, one.batch_stats)), jax.tree.leaves((four.params, four.batch_stats))):
    np.testing.assert_array_equal(a, b)
  pruned = jax.tree.leaves(jax.tree.map(lambda m, p: None if m is None else np.asarray(p)[~np.asarray(m)], mask,
                                        four.params, is_leaf=lambda x: x is None))
  assert all(np.all(weights == 0.0) for weights in pruned) and int(four.step) == steps_per_epoch


def test_a_dispatch_runs_k_steps_or_one_so_two_programs_serve_any_checkpoint_spacing():
  """A chunk of every remainder's length would compile a program per length (13 of them for 52 steps per dispatch
  and a checkpoint every 100 steps); K steps, then single steps up to the checkpoint, compile two."""
  config = resident_config(steps_per_dispatch=4)
  setup, recipe = make_setup(config), Recipe.of(config)
  steps_per_epoch, compiled = train_loop.recipe_steps(recipe, setup)
  state = train_loop.initial_state(recipe, 0, setup, jax.tree.map(lambda _: None, setup.variables['params']))
  feed = dispatch.make(recipe, Running.of(config), setup, steps_per_epoch, compiled, 0)
  step, lengths = 0, []
  while step < steps_per_epoch:  # a checkpoint every 7 steps: stops at 7, 14, ... and the epoch's end
    state, _, ran = feed.advance(state, step, min(steps_per_epoch, (step // 7 + 1) * 7))
    step += ran
    lengths.append(ran)
  assert set(lengths) == {4, 1} and sum(lengths) == steps_per_epoch
