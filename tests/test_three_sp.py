"""Table 2's baselines: 3SP (and its reinit and rescale variants) and random channel pruning, worked out by hand."""

import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import prospr_jax
from prospr_jax import channel_scores, channels, initialization, pruned_network, seeds
from prospr_jax.criteria import structured
from prospr_jax.models import get_model, init_variables, plans


def two_layer_loss(params, batch):
  """``L = (x W1 w2)^2 / 2`` on one example: a linear net with two hidden units."""
  x, _ = batch
  return 0.5 * jnp.sum(x @ params['l1']['kernel'] @ params['l2']['kernel']) ** 2


PARAMS = {'l1': {'kernel': jnp.array([[1.0, 2.0], [3.0, -1.0]])}, 'l2': {'kernel': jnp.array([[1.0], [2.0]])}}
BATCHES = (jnp.ones((1, 1, 2)), jnp.zeros((1, 1), jnp.int32))
HIDDEN = lambda path, leaf: path == ('l1', 'kernel')


def test_three_sp_scores_sensitivity_per_flop_by_hand():
  # x W1 = [4, 1], z = 4 * 1 + 1 * 2 = 6, L = 18; dL/dc_j = z (x W1)_j w2_j = [24, 12].
  # Producing a hidden unit costs 2 multiply-adds per example (fan-in 2): 2 * 1 * 2 = 4 FLOPs.
  scores = prospr_jax.three_sp_saliency(PARAMS, BATCHES, loss_fn=two_layer_loss, structured=True, prunable=HIDDEN)
  np.testing.assert_allclose(scores['l1']['kernel'], [(24 / 4) / 9, (12 / 4) / 9])
  costly_first = {'l1': {'kernel': jnp.array([8.0, 1.0])}, 'l2': {'kernel': None}}
  scores = prospr_jax.three_sp_saliency(PARAMS, BATCHES, loss_fn=two_layer_loss, structured=True, prunable=HIDDEN,
                                        channel_costs=costly_first)
  np.testing.assert_allclose(scores['l1']['kernel'], [3 / 15, 12 / 15])  # 24 / 8 = 3 against 12 / 1 = 12
  assert prospr_jax.global_topk_mask(scores, 0.5)['l1']['kernel'].tolist() == [False, True]


def test_three_sp_with_equal_costs_ranks_like_structured_snip():
  model = get_model('small_cnn', 3, widths=(4, 6))
  x = jax.random.normal(jax.random.key(0), (1, 5, 8, 8, 1))
  variables = model.init(jax.random.key(1), x[0], train=False)
  loss_fn = prospr_jax.flax_loss_fn(model, variables)
  batches = (x, jnp.array([[0, 1, 2, 0, 1]]))
  snip = prospr_jax.snip_saliency(variables['params'], batches, loss_fn=loss_fn, structured=True)
  ones = jax.tree.map(jnp.ones_like, snip)
  three_sp = prospr_jax.three_sp_saliency(variables['params'], batches, loss_fn=loss_fn, structured=True,
                                          channel_costs=ones)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), three_sp, snip)


def test_a_channels_flops_count_its_filter_and_the_rows_the_next_layer_reads_from_it():
  model = get_model('small_cnn', 10)  # on 8x8x1: conv 3x3 1->32 (8x8 out), conv 3x3/2 32->64 (4x4 out), dense 64->10
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
  batch = (jnp.zeros((2, 8, 8, 1)), jnp.zeros(2, jnp.int32))
  positions = structured.kernel_positions(prospr_jax.flax_loss_fn(model, variables), variables['params'], batch)
  assert positions == {'Conv_0/kernel': 64, 'Conv_1/kernel': 16, 'Dense_0/kernel': 1}
  flops = channel_scores.channel_flops(plans.channel_plan(model, variables['params']), variables['params'], positions)
  np.testing.assert_array_equal(flops['Conv_0/kernel'], np.full(32, 2 * 64 * 9 + 2 * 16 * 9 * 64))
  np.testing.assert_array_equal(flops['Conv_1/kernel'], np.full(64, 2 * 16 * 9 * 32 + 2 * 1 * 10))


def test_random_channel_pruning_draws_one_score_per_channel_and_one_per_tied_lane():
  model = get_model('resnet20', 3, width=4)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
  plan = plans.channel_plan(model, variables['params'])
  scores = channel_scores.score_channels(prospr_jax.random_saliency, plan, variables['params'], None, rng=7)
  assert {name: s.shape for name, s in scores.items()} == {g.name: (g.size,) for g in plan.groups}
  assert sum(float(s.sum()) for s in scores.values()) == pytest.approx(1.0)
  again = channel_scores.score_channels(prospr_jax.random_saliency, plan, variables['params'], None, rng=7)
  jax.tree.map(np.testing.assert_array_equal, scores, again)
  mask = prospr_jax.global_topk_mask(scores, 0.75, keep_one_per_layer=True)
  assert sum(int(m.sum()) for m in mask.values()) == int(np.ceil(0.25 * sum(g.size for g in plan.groups)))


def test_rescale_multiplies_each_kept_unit_by_the_root_of_its_lost_fan_in():
  params = {'dense': {'kernel': jnp.ones((3, 2)), 'bias': jnp.ones(2)}}
  mask = {'dense': {'kernel': jnp.array([[True, True], [False, True], [False, True]]), 'bias': None}}
  rescaled = initialization.rescale_kernels(params, mask)
  np.testing.assert_allclose(rescaled['dense']['kernel'][:, 0], np.sqrt(3.0))  # 1 of 3 inputs kept
  np.testing.assert_allclose(rescaled['dense']['kernel'][:, 1], 1.0)
  np.testing.assert_array_equal(rescaled['dense']['bias'], params['dense']['bias'])


def three_sp_setup(criterion):
  model = get_model('small_cnn', 10)
  info = types.SimpleNamespace(input_shape=(8, 8, 1), num_classes=10)
  setup = types.SimpleNamespace(model=model, info=info, variables=init_variables(model, (8, 8, 1), jax.random.key(0)))
  config = ml_collections.ConfigDict({'criterion': criterion, 'ablation': 'none', 'seed': 0,
                                      'prune': {'structured': True}})
  plan = plans.channel_plan(model, setup.variables['params'])
  mask = channels.ones(plan)
  mask['Conv_0/kernel'][::2] = False
  return config, setup, plan, mask


def test_three_sp_reinit_starts_the_compact_network_from_its_own_initialiser():
  config, setup, plan, mask = three_sp_setup('three_sp_reinit')
  start = pruned_network.starting_variables(config, setup, mask)
  narrow, _ = prospr_jax.compact(setup.model, setup.variables, mask)
  fresh = init_variables(narrow, (8, 8, 1), seeds.criterion_reinit(0))
  jax.tree.map(np.testing.assert_array_equal, channels.compact_tree(plan, mask, start), fresh)


def test_three_sp_rescale_starts_from_the_initial_weights_scaled_for_the_lost_inputs():
  config, setup, _, mask = three_sp_setup('three_sp_rescale')
  start = pruned_network.starting_variables(config, setup, mask)
  conv1 = setup.variables['params']['Conv_1']['kernel']
  np.testing.assert_allclose(start['params']['Conv_1']['kernel'], conv1 * np.sqrt(2.0), rtol=1e-6)  # half its inputs
  np.testing.assert_array_equal(start['params']['Conv_0']['kernel'], setup.variables['params']['Conv_0']['kernel'])
