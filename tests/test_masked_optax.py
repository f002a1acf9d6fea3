"""masked_optimizer: pruned weights stay exactly zero in a user's own optax loop, through a checkpoint restore."""

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from nets import mlp_problem

import prospr_jax


def pruned_problem(sparsity=0.7):
  params, batches, loss_fn = mlp_problem()
  scores = jax.tree.map(lambda p: jnp.abs(p) if p.ndim > 1 else None, params)  # magnitude, built by hand
  masks = prospr_jax.global_topk_mask(scores, sparsity)
  return params, masks, batches, loss_fn


def train(params, opt_state, optimizer, batches, loss_fn, steps):
  @jax.jit
  def step(params, opt_state, batch):
    updates, opt_state = optimizer.update(jax.grad(loss_fn)(params, batch), opt_state, params)
    return optax.apply_updates(params, updates), opt_state
  for k in range(steps):
    params, opt_state = step(params, opt_state, jax.tree.map(lambda b: b[k % 4], batches))
  return params, opt_state


def assert_pruned_are_zero(params, masks):
  jax.tree.map(lambda m, p: None if m is None else np.testing.assert_array_equal(np.where(m, 0.0, p), 0.0),
               masks, params, is_leaf=prospr_jax.masks.is_none)


OPTIMIZERS = {
    'sgd_momentum_weight_decay': lambda: optax.chain(optax.add_decayed_weights(5e-2), optax.sgd(0.1, momentum=0.9)),
    'adamw': lambda: optax.adamw(1e-2, weight_decay=0.5),
}


@pytest.mark.parametrize('name', sorted(OPTIMIZERS))
def test_pruned_weights_stay_exactly_zero_even_unmasked_at_the_start(name):
  params, masks, batches, loss_fn = pruned_problem()
  optimizer = prospr_jax.masked_optimizer(OPTIMIZERS[name](), masks)
  params, _ = train(params, optimizer.init(params), optimizer, batches, loss_fn, steps=5)
  assert_pruned_are_zero(params, masks)


def test_kept_weights_take_the_plain_optimizers_step_on_masked_gradients():
  params, masks, batches, loss_fn = pruned_problem()
  params = prospr_jax.apply_mask(params, masks)
  inner = optax.sgd(0.1, momentum=0.9)
  params_m, _ = train(params, inner.init(params), prospr_jax.masked_optimizer(inner, masks), batches, loss_fn, 3)
  masked_loss = lambda p, b: loss_fn(prospr_jax.apply_mask(p, masks), b)  # gradients zero where pruned
  params_p, _ = train(params, inner.init(params), inner, batches, masked_loss, 3)
  jax.tree.map(np.testing.assert_array_equal, params_m, params_p)


def test_a_run_restored_from_a_checkpoint_continues_bit_identical_with_pruned_weights_zero():
  params, masks, batches, loss_fn = pruned_problem()
  optimizer = prospr_jax.masked_optimizer(OPTIMIZERS['adamw'](), masks)
  straight, _ = train(params, optimizer.init(params), optimizer, batches, loss_fn, steps=6)
  half, opt_state = train(params, optimizer.init(params), optimizer, batches, loss_fn, steps=3)
  saved = flax.serialization.to_bytes({'params': half, 'opt_state': opt_state})
  template = {'params': params, 'opt_state': optimizer.init(params)}
  restored = flax.serialization.from_bytes(template, saved)
  assert jax.tree.structure(restored['opt_state']) == jax.tree.structure(OPTIMIZERS['adamw']().init(params))
  resumed, _ = train(restored['params'], restored['opt_state'], optimizer,
                     jax.tree.map(lambda b: jnp.roll(b, -3, axis=0), batches), loss_fn, steps=3)
  assert_pruned_are_zero(resumed, masks)
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)


def test_a_channel_mask_keeps_whole_output_channels_at_zero():
  params, batches, loss_fn = mlp_problem()
  scores = jax.tree.map(lambda p: jnp.abs(p).sum(0) if p.ndim > 1 else None, params)
  masks = prospr_jax.global_topk_mask(scores, 0.5)
  optimizer = prospr_jax.masked_optimizer(optax.adam(1e-2), masks)
  params, _ = train(params, optimizer.init(params), optimizer, batches, loss_fn, steps=3)
  np.testing.assert_array_equal(prospr_jax.apply_mask(params, masks)['Dense_0']['kernel'], params['Dense_0']['kernel'])


def test_update_without_params_is_refused():
  params, masks, _, _ = pruned_problem()
  optimizer = prospr_jax.masked_optimizer(optax.sgd(0.1), masks)
  with pytest.raises(ValueError, match='needs the params'):
    optimizer.update(params, optimizer.init(params))
