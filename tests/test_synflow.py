"""SynFlow: data-free, conserves synaptic flow layer by layer, iterative and monotone."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import prospr_jax
from prospr_jax.criteria.synflow import synaptic_flow


class BiasFreeReLUNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    for width in (7, 5):
      x = nn.relu(nn.Dense(width, use_bias=False, param_dtype=jnp.float64)(x))
    return nn.Dense(3, use_bias=False, param_dtype=jnp.float64)(x)


def problem():
  model = BiasFreeReLUNet()
  params = model.init(jax.random.key(0), jnp.ones((1, 4), jnp.float64))['params']
  return params, lambda p, x: model.apply({'params': p}, x)


def test_golden_values_on_a_two_layer_linear_net():
  # f(x) = x W1 W2 on x = (1, 1): R = sum_ij |W1|_ij * rowsum(|W2|)_j; score of W1_ij = |W1_ij| * rowsum(|W2|)_j.
  params = {'a': jnp.array([[1.0, -2.0], [3.0, 0.5]]), 'b': jnp.array([[2.0], [-4.0]])}
  apply_fn = lambda p, x: x @ p['a'] @ p['b']
  flow = synaptic_flow(params, prospr_jax.ones_mask(params), jnp.ones((1, 2)), apply_fn=apply_fn)
  np.testing.assert_allclose(flow['a'], [[2.0, 8.0], [6.0, 2.0]])
  np.testing.assert_allclose(flow['b'], [[8.0], [10.0]])  # |W2_j| * colsum(|W1|)_j


def test_every_layer_carries_the_same_total_flow():
  params, apply_fn = problem()
  flow = synaptic_flow(params, prospr_jax.ones_mask(params), jnp.ones((1, 4), jnp.float64), apply_fn=apply_fn)
  totals = [float(jnp.sum(flow[layer]['kernel'])) for layer in ('Dense_0', 'Dense_1', 'Dense_2')]
  r = float(jnp.sum(apply_fn(jax.tree.map(jnp.abs, params), jnp.ones((1, 4)))))
  np.testing.assert_allclose(totals, [r, r, r], rtol=1e-12)


def test_scores_do_not_depend_on_the_data():
  params, apply_fn = problem()
  a = jax.random.normal(jax.random.key(1), (2, 8, 4))
  b = jax.random.normal(jax.random.key(2), (2, 8, 4)) * 100
  scores = [prospr_jax.synflow_saliency(params, x, apply_fn=apply_fn, sparsity=0.8, rounds=5) for x in (a, b)]
  jax.tree.map(np.testing.assert_array_equal, *scores)


def test_iterative_rounds_are_monotone_and_end_at_the_exact_count():
  params, apply_fn = problem()
  rounds = []

  def recording_mask_fn(scores, sparsity):
    rounds.append(prospr_jax.global_topk_mask(scores, sparsity))
    return rounds[-1]

  scores = prospr_jax.synflow_saliency(params, input_shape=(4,), apply_fn=apply_fn, sparsity=0.9, rounds=10,
                                       mask_fn=recording_mask_fn)
  assert len(rounds) == 10
  for earlier, later in zip(rounds, rounds[1:]):
    assert all(not jnp.any(l & ~e) for e, l in zip(jax.tree.leaves(earlier), jax.tree.leaves(later)))
  final = prospr_jax.global_topk_mask(scores, 0.9)
  jax.tree.map(np.testing.assert_array_equal, final, rounds[-1])
  assert sum(int(m.sum()) for m in jax.tree.leaves(final)) == int(np.ceil(0.1 * (28 + 35 + 15)))
