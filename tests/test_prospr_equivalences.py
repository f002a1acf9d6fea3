"""ProsPr's modes agree with each other and with independent derivations (float64)."""

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from nets import bn_cnn_problem, mlp_problem, unrolled_meta_loss

import prospr_jax

ALL_CLOSE = dict(rtol=1e-10, atol=1e-14)


def assert_trees_close(actual, expected, **tolerance):
  tolerance = tolerance or ALL_CLOSE
  assert jax.tree.structure(actual, is_leaf=lambda x: x is None) == jax.tree.structure(
      expected, is_leaf=lambda x: x is None)
  jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, **tolerance), actual, expected)


def first_batch(batches):
  return jax.tree.map(lambda x: x[:1], batches)


@pytest.mark.parametrize('momentum', [0.0, 0.9])
@pytest.mark.slow
def test_scan_equals_a_python_loop_unroll(momentum):
  params, batches, loss_fn = bn_cnn_problem()
  ours = prospr_jax.prospr_meta_gradient(params, batches, loss_fn=loss_fn, inner_momentum=momentum)
  ones = jax.tree.map(jnp.ones_like, ours)
  unrolled = jax.jit(jax.grad(lambda c: unrolled_meta_loss(params, batches, loss_fn, c, momentum=momentum)))(ones)
  assert_trees_close(ours, unrolled)


@pytest.mark.slow
def test_checkpointing_the_scan_body_does_not_change_the_scores():
  params, batches, loss_fn = bn_cnn_problem()
  with_remat = prospr_jax.prospr_saliency(params, batches, loss_fn=loss_fn, checkpoint_steps=True)
  without = prospr_jax.prospr_saliency(params, batches, loss_fn=loss_fn, checkpoint_steps=False)
  assert_trees_close(with_remat, without)


@pytest.mark.parametrize('momentum', [0.0, 0.9])
def test_first_order_is_final_gradient_times_initial_weights(momentum):
  params, batches, loss_fn = mlp_problem()
  ours = prospr_jax.prospr_meta_gradient(params, batches, loss_fn=loss_fn, inner_momentum=momentum,
                                         first_order=True)
  # Another way: train M plain SGD steps with optax, then grad_w L(w_M) * w_init (paper eq. 17).
  optimizer = optax.sgd(0.1, momentum=momentum or None)
  w, state = params, optimizer.init(params)
  for k in range(3):
    updates, state = optimizer.update(jax.grad(loss_fn)(w, jax.tree.map(lambda x: x[k], batches)), state)
    w = optax.apply_updates(w, updates)
  final_grad = jax.grad(loss_fn)(w, jax.tree.map(lambda x: x[3], batches))  # eager: MLP only
  expected = jax.tree.map(lambda g, w0: g * w0 if w0.ndim > 1 else None, final_grad, params)
  assert_trees_close(ours, expected)


def test_first_order_differs_from_exact():
  params, batches, loss_fn = mlp_problem()
  exact = prospr_jax.prospr_meta_gradient(params, batches, loss_fn=loss_fn)
  first = prospr_jax.prospr_meta_gradient(params, batches, loss_fn=loss_fn, first_order=True)
  assert max(float(jnp.max(jnp.abs(e - f))) for e, f in zip(jax.tree.leaves(exact), jax.tree.leaves(first))) > 1e-4


@pytest.mark.parametrize('structured', [pytest.param(False, marks=pytest.mark.slow), True],
                         ids=['per_weight', 'per_channel'])
def test_streamed_first_order_equals_scanned(structured):
  params, batches, loss_fn = bn_cnn_problem(num_batches=6)
  scanned = prospr_jax.prospr_saliency(params, batches, loss_fn=loss_fn, first_order=True, inner_momentum=0.9,
                                       structured=structured)
  stream = (jax.tree.map(lambda x: x[k], batches) for k in range(6))
  streamed = prospr_jax.prospr_saliency_streamed(params, stream, loss_fn=loss_fn, inner_momentum=0.9,
                                                 structured=structured)
  assert_trees_close(streamed, scanned)


def test_streamed_with_num_steps_reads_exactly_m_plus_one_batches_of_an_endless_stream():
  params, batches, loss_fn = mlp_problem(num_batches=4)
  taken = []

  def endless():
    k = 0
    while True:
      taken.append(k)
      yield jax.tree.map(lambda x: x[k % 4], batches)
      k += 1

  streamed = prospr_jax.prospr_saliency_streamed(params, endless(), loss_fn=loss_fn, num_steps=3)
  assert taken == [0, 1, 2, 3]
  assert_trees_close(streamed, prospr_jax.prospr_saliency(params, batches, loss_fn=loss_fn, first_order=True))


@pytest.mark.slow
def test_streamed_holds_at_most_two_batches_at_a_time():
  import gc
  import weakref
  params, batches, loss_fn = mlp_problem(num_batches=4)
  alive, most_alive = [], [0]

  def stream():
    for k in range(12):
      gc.collect()
      most_alive[0] = max(most_alive[0], sum(ref() is not None for ref in alive))
      x = np.array(batches[0][k % 4])
      alive.append(weakref.ref(x))
      yield x, np.array(batches[1][k % 4])

  prospr_jax.prospr_saliency_streamed(params, stream(), loss_fn=loss_fn)
  assert most_alive[0] <= 2


@pytest.mark.slow
def test_m_zero_equals_snip():
  params, batches, loss_fn = bn_cnn_problem()
  prospr = prospr_jax.prospr_saliency(params, first_batch(batches), loss_fn=loss_fn)
  snip = prospr_jax.snip_saliency(params, first_batch(batches), loss_fn=loss_fn)
  assert_trees_close(prospr, snip)


@pytest.mark.parametrize('first_order', [False, True], ids=['exact', 'first_order'])
@pytest.mark.slow
def test_per_channel_meta_gradient_is_the_channel_sum_of_the_per_weight_one(first_order):
  # One mask entry per channel multiplies every weight of the channel, so by the chain rule
  # its derivative is the sum of the per-weight derivatives over that channel.
  params, batches, loss_fn = bn_cnn_problem()
  per_weight = prospr_jax.prospr_meta_gradient(params, batches, loss_fn=loss_fn, first_order=first_order)
  per_channel = prospr_jax.prospr_meta_gradient(params, batches, loss_fn=loss_fn, first_order=first_order,
                                                structured=True)
  assert per_channel['Dense_0']['kernel'] is None  # the classifier keeps all its outputs
  for conv in ('Conv_0', 'Conv_1'):
    g = per_weight[conv]['kernel']
    np.testing.assert_allclose(per_channel[conv]['kernel'], g.sum(axis=tuple(range(g.ndim - 1))), **ALL_CLOSE)


@pytest.mark.slow
def test_any_differentiable_optax_optimizer_can_take_the_inner_steps():
  params, batches, loss_fn = mlp_problem()
  adam = optax.adam(1e-2)
  ours = prospr_jax.prospr_meta_gradient(params, batches, loss_fn=loss_fn, inner_optimizer=adam)

  def meta_loss(c):
    w = prospr_jax.apply_mask(params, c)
    state = adam.init(w)
    for k in range(3):
      updates, state = adam.update(jax.grad(loss_fn)(w, jax.tree.map(lambda x: x[k], batches)), state)
      w = optax.apply_updates(w, updates)
    return loss_fn(w, jax.tree.map(lambda x: x[3], batches))

  assert_trees_close(ours, jax.jit(jax.grad(meta_loss))(jax.tree.map(jnp.ones_like, ours)), rtol=1e-8, atol=1e-12)


@pytest.mark.slow
def test_first_order_with_an_update_that_reads_the_params_keeps_their_derivative():
  """Weight decay makes dw_M/dw_0 = (1 - lr * decay)^M, not I: first order then differentiates through the steps."""
  params, batches, loss_fn = mlp_problem()
  decayed = optax.chain(optax.add_decayed_weights(0.5), optax.sgd(0.1))
  ours = prospr_jax.prospr_meta_gradient(params, batches, loss_fn=loss_fn, inner_optimizer=decayed, first_order=True)

  def meta_loss(c):
    w = prospr_jax.apply_mask(params, c)
    state = decayed.init(w)
    for k in range(3):
      grads = jax.lax.stop_gradient(jax.grad(loss_fn)(w, jax.tree.map(lambda x: x[k], batches)))
      updates, state = decayed.update(grads, state, w)
      w = optax.apply_updates(w, updates)
    return loss_fn(w, jax.tree.map(lambda x: x[3], batches))

  expected = jax.jit(jax.grad(meta_loss))(jax.tree.map(jnp.ones_like, ours))
  assert_trees_close(ours, expected, rtol=1e-10, atol=1e-14)
  plain = prospr_jax.prospr_meta_gradient(params, batches, loss_fn=loss_fn, first_order=True)
  first = next(leaf for leaf in jax.tree.leaves(plain))
  assert not np.allclose(first, next(leaf for leaf in jax.tree.leaves(expected)))  # the decay did matter


@pytest.mark.parametrize('first_order', [False, True])
def test_runs_under_jit(first_order):
  params, batches, loss_fn = mlp_problem()
  score = lambda p, b: prospr_jax.prospr_saliency(p, b, loss_fn=loss_fn, structured=True, first_order=first_order)
  assert_trees_close(jax.jit(score)(params, batches), score(params, batches))


@pytest.mark.slow
def test_the_traced_program_does_not_grow_with_the_number_of_steps():
  params, batches, loss_fn = mlp_problem(num_batches=33)

  def count_equations(jaxpr):
    return sum(1 + sum(count_equations(sub) for sub in jex.jaxprs_in_params(eqn.params)) for eqn in jaxpr.eqns)

  def program_size(num_steps):
    b = jax.tree.map(lambda x: x[:num_steps + 1], batches)
    jaxpr = jax.make_jaxpr(lambda p: prospr_jax.prospr_meta_gradient(p, b, loss_fn=loss_fn))(params)
    return count_equations(jaxpr.jaxpr)

  assert program_size(2) == program_size(32)


def test_the_output_layer_is_found_by_forward_order_not_by_name():
  params, batches, _ = bn_cnn_problem()
  # Rename so that the classifier sorts first: the forward pass, not the key order, decides.
  renamed = {'a_head': params['Dense_0'], 'z_conv0': params['Conv_0'], 'y_conv1': params['Conv_1'],
             **{k: v for k, v in params.items() if k.startswith('BatchNorm')}}

  def loss_fn(p, batch):
    x, y = batch
    h = jax.lax.conv_general_dilated(x, p['z_conv0']['kernel'], (1, 1), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    h = jax.lax.conv_general_dilated(jax.nn.relu(h), p['y_conv1']['kernel'], (1, 1), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return prospr_jax.softmax_cross_entropy(h.mean(axis=(1, 2)) @ p['a_head']['kernel'], y)

  scores = prospr_jax.snip_saliency(renamed, first_batch(batches), loss_fn=loss_fn, structured=True)
  assert scores['a_head']['kernel'] is None
  assert scores['z_conv0']['kernel'].shape == (4,) and scores['y_conv1']['kernel'].shape == (6,)
