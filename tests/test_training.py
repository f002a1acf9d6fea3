"""Training a pruned network: pruned weights stay exactly zero through momentum, weight decay and restore."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import prospr_jax
from prospr_jax import data
from prospr_jax.harness import train_steps
from prospr_jax.models import get_model
from prospr_jax.runtime import checkpointing

DIGITS = data.get_dataset_info('digits')


@functools.cache
def pruned_setup():
  model = get_model('small_cnn', 10)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
  mask = prospr_jax.global_topk_mask(prospr_jax.random_saliency(variables['params'], rng=1), 0.8)
  optimizer = train_steps.make_optimizer(learning_rate=0.1, momentum=0.9, weight_decay=5e-4)
  state = train_steps.create_train_state(variables, mask, optimizer, jax.random.key(2))
  step = jax.jit(functools.partial(train_steps.train_step, model=model, optimizer=optimizer))
  return model, variables, mask, state, step


def masked_leaves(params, mask):
  return jax.tree.map(lambda m, p: None if m is None else p, mask, params, is_leaf=lambda x: x is None)


def pruned_entries(params, mask):
  return [np.asarray(p)[~np.asarray(m)] for p, m in zip(jax.tree.leaves(masked_leaves(params, mask)),
                                                        jax.tree.leaves(mask))]


def assert_pruned_weights_are_zero(state, mask):
  for values in pruned_entries(state.params, mask):
    assert values.size > 0 and not np.any(values)  # exactly 0.0, not merely small


def run_train_steps(state, step, batches, n):
  for _ in range(n):
    state, _ = step(state, next(batches))
  return state


def digits_batches(seed=0, start_step=0):
  return iter(data.train_loader(DIGITS, data.load_source('digits', 'train'), global_batch_size=32, seed=seed,
                                start_step=start_step))


def test_pruned_weights_stay_exactly_zero_through_momentum_and_weight_decay():
  _, _, mask, state, step = pruned_setup()
  assert_pruned_weights_are_zero(state, mask)
  state = run_train_steps(state, step, digits_batches(), 60)
  assert_pruned_weights_are_zero(state, mask)
  momentum = state.opt_state[1][0].trace
  kept = [np.asarray(t)[np.asarray(m)] for t, m in zip(jax.tree.leaves(masked_leaves(momentum, mask)),
                                                      jax.tree.leaves(mask))]
  assert all(np.any(k) for k in kept)  # training really moved the kept weights


def test_pruned_weights_stay_zero_after_a_checkpoint_restore_and_more_training(tmp_path):
  _, variables, mask, state, step = pruned_setup()
  batches = digits_batches()
  state = run_train_steps(state, step, batches, 20)
  checkpointer = checkpointing.Checkpointer(tmp_path)
  checkpointer.save(20, state, variables['params'], {'epoch': 0})
  checkpointer.wait()
  fresh_batches = digits_batches(start_step=20)
  restored, initial, meta = checkpointer.restore(pruned_setup()[3], variables['params'])
  assert meta == {'epoch': 0} and int(restored.step) == 20
  jax.tree.map(np.testing.assert_array_equal, restored.params, state.params)
  assert_pruned_weights_are_zero(restored, mask)
  assert_pruned_weights_are_zero(run_train_steps(restored, step, fresh_batches, 20), mask)


def test_the_learning_rate_drops_tenfold_at_each_milestone():
  schedule = train_steps.lr_schedule(0.1, steps_per_epoch=10, milestones=(2, 3))
  assert [float(schedule(s)) for s in (0, 19, 20, 29, 30)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])


def test_weight_decay_enters_before_momentum_like_torch_sgd():
  optimizer = train_steps.make_optimizer(learning_rate=1.0, momentum=0.9, weight_decay=0.5)
  params = {'w': jnp.array([2.0])}
  state = optimizer.init(params)
  updates, state = optimizer.update({'w': jnp.array([1.0])}, state, params)
  assert float(updates['w'][0]) == pytest.approx(-(1.0 + 0.5 * 2.0))  # buffer = g + wd * w
  updates, _ = optimizer.update({'w': jnp.array([1.0])}, state, params)
  assert float(updates['w'][0]) == pytest.approx(-(0.9 * 2.0 + 2.0))


def test_evaluation_counts_top1_and_top5_and_ignores_padding():
  model, variables, mask, state, _ = pruned_setup()
  batch = next(data.eval_batches(DIGITS, data.load_source('digits', 'test'), global_batch_size=400))
  sums = jax.jit(functools.partial(train_steps.eval_step, model=model))(state, batch)
  assert float(sums['count']) == 359
  assert 0 <= float(sums['top1']) <= float(sums['top5']) <= 359
  logits = model.apply({'params': prospr_jax.apply_mask(state.params, mask), 'batch_stats': state.batch_stats},
                       batch['image'], train=False)
  real = batch['weight'] > 0
  assert float(sums['top1']) == np.sum(np.argmax(logits, -1)[real] == batch['label'][real])
