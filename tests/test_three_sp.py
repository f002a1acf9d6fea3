"""Table 2's baselines: 3SP (and its reinit and rescale variants) and random channel pruning, worked out by hand."""

import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import prospr_jax
from prospr_jax import initialization
from prospr_jax.channels import groups, scores as channel_scores
from prospr_jax.criteria import registry, scores as scores_lib, structured
from prospr_jax.harness import pruned_network, pruning, seeds
from prospr_jax.harness.records import PruneSpec, Scoring
from prospr_jax.harness.setup import make_setup
from prospr_jax.models import get_model, init_variables, plans


def linear_loss(params, batch):
  """``L = (x W1 W2 W3)^2 / 2`` on one example: a linear net 1 -> 2 -> 3 -> 1."""
  x, _ = batch
  return 0.5 * jnp.sum(x @ params['l1']['kernel'] @ params['l2']['kernel'] @ params['l3']['kernel']) ** 2


PARAMS = {'l1': {'kernel': jnp.array([[1.0, 2.0]])}, 'l2': {'kernel': jnp.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])},
          'l3': {'kernel': jnp.ones((3, 1))}}
BATCHES = (jnp.ones((1, 1, 1)), jnp.zeros((1, 1), jnp.int32))
LINEAR_PLAN = groups.ChannelPlan('linear', (
    groups.ChannelGroup('l1/kernel', 2, (groups.Slot(('l1',), (0, 1)),), readers=(groups.Slot(('l2',), (0, 1)),)),
    groups.ChannelGroup('l2/kernel', 3, (groups.Slot(('l2',), (0, 1, 2)),),
                          readers=(groups.Slot(('l3',), (0, 1, 2)),)),
))
# x W1 = [1, 2], x W1 W2 = [1, 2, 3], z = 6, L = 18. dL/dc of a hidden unit: z * (its activation) * (its path to z):
# layer 1, paths W2 W3 = [2, 2]: [6 * 1 * 2, 6 * 2 * 2] = [12, 24]; layer 2, paths W3 = 1: [6, 12, 18].
# FLOPs its removal saves (2 per multiply-add, one output position): a layer-1 unit's filter (fan-in 1) is 2,
# the row of W2 that reads it (3 weights) 6: F = 8. A layer-2 unit's filter (fan-in 2) is 4, W3's row 2: F = 6.
LINEAR_SCORES = np.array([12 / 8, 24 / 8, 6 / 6, 12 / 6, 18 / 6]) / 10.5


@pytest.mark.slow
def test_three_sp_scores_sensitivity_per_flop_removed_by_hand_on_the_harness_path():
  criterion = registry.get_criterion('three_sp')  # what prune.py calls, through score_channels
  scores = channel_scores.score_channels(criterion, LINEAR_PLAN, PARAMS, BATCHES, loss_fn=linear_loss)
  np.testing.assert_allclose(np.concatenate([scores['l1/kernel'], scores['l2/kernel']]), LINEAR_SCORES, rtol=1e-12)
  library = channel_scores.score_channels(prospr_jax.three_sp_saliency, LINEAR_PLAN, PARAMS, BATCHES,
                                          loss_fn=linear_loss)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), library, scores)
  # the producing share alone (2 and 4 FLOPs) would rank layer 1's units first: 24 / 2 = 12 against 18 / 4 = 4.5
  mask = prospr_jax.global_topk_mask(scores, 0.6)
  assert mask['l1/kernel'].tolist() == [False, True] and mask['l2/kernel'].tolist() == [False, False, True]


def test_three_sp_with_given_costs_divides_by_them():
  hidden = lambda path, leaf: path == ('l1', 'kernel')
  costly_first = {'l1': {'kernel': jnp.array([8.0, 1.0])}, 'l2': {'kernel': None}, 'l3': {'kernel': None}}
  scores = prospr_jax.three_sp_saliency(PARAMS, BATCHES, loss_fn=linear_loss, structured=True, prunable=hidden,
                                        channel_costs=costly_first)
  np.testing.assert_allclose(scores['l1']['kernel'], [1.5 / 25.5, 24 / 25.5])  # 12 / 8 against 24 / 1


def test_three_sp_on_channels_without_costs_or_a_plan_names_score_channels():
  with pytest.raises(ValueError, match='which later layers read.*prospr_jax.score_channels.*channel_plan'):
    prospr_jax.three_sp_saliency(PARAMS, BATCHES, loss_fn=linear_loss, structured=True)


def test_three_sp_per_weight_divides_by_the_two_flops_of_each_multiply_add():
  scores = prospr_jax.three_sp_saliency(PARAMS, BATCHES, loss_fn=linear_loss)
  snip = prospr_jax.snip_saliency(PARAMS, BATCHES, loss_fn=linear_loss)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), scores, snip)  # one position: F = 2 each


@pytest.mark.slow
def test_score_channels_costs_the_channels_itself_when_the_criterion_takes_channel_costs():
  model = get_model('resnet20', 3, width=2)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
  params, plan = variables['params'], plans.channel_plan(model, variables['params'])
  batches = (jax.random.normal(jax.random.key(1), (1, 4, 8, 8, 1)), jnp.array([[0, 1, 2, 0]]))
  loss_fn = prospr_jax.flax_loss_fn(model, variables)
  scores = channel_scores.score_channels(prospr_jax.three_sp_saliency, plan, params, batches, loss_fn=loss_fn)
  positions = structured.kernel_positions(loss_fn, params, scores_lib.batch_at(batches, 0))
  costs = channel_scores.channel_flops(plan, params, positions)
  given = channel_scores.score_channels(prospr_jax.three_sp_saliency, plan, params, batches, loss_fn=loss_fn,
                                        channel_costs=costs)
  jax.tree.map(np.testing.assert_array_equal, scores, given)


@pytest.mark.slow
def test_the_harness_scores_3sp_as_structured_snip_per_flop_removed(tmp_path):
  from configs import default
  config = default.get_config()
  config.criterion = 'three_sp'
  config.prune.update(structured=True, num_steps=0, batch_size=16)
  setup = make_setup(config)
  score = lambda name: pruning.compute_scores(Scoring.of(dict_with(config, criterion=name)), PruneSpec.of(config),
                                              setup.model, setup.variables, setup.info, setup.train_source, setup.mesh)
  three_sp, snip = score('three_sp'), score('snip')
  # small_cnn on 8x8x1: conv 3x3 1->32 (8x8 out), conv 3x3/2 32->64 (4x4 out), global pool, dense 64->10
  flops = {'Conv_0/kernel': 2 * 64 * 9 * 1 + 2 * 16 * 9 * 64, 'Conv_1/kernel': 2 * 16 * 9 * 32 + 2 * 1 * 10}
  per_flop = {name: np.asarray(s) / flops[name] for name, s in snip.items()}
  total = sum(s.sum() for s in per_flop.values())
  for name, s in per_flop.items():
    np.testing.assert_allclose(three_sp[name], s / total, rtol=1e-5)  # float32 params


def dict_with(config, **overrides):
  copy = config.copy_and_resolve_references()
  copy.update(overrides)
  return copy


@pytest.mark.slow
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
  mask = groups.ones(plan)
  mask['Conv_0/kernel'][::2] = False
  return config, setup, plan, mask


@pytest.mark.slow
def test_three_sp_reinit_starts_the_compact_network_from_its_own_initialiser():
  config, setup, plan, mask = three_sp_setup('three_sp_reinit')
  start = pruned_network.starting_variables(config, setup, mask)
  narrow, _ = prospr_jax.compact(setup.model, setup.variables, mask)
  fresh = init_variables(narrow, (8, 8, 1), seeds.criterion_reinit(0))
  jax.tree.map(np.testing.assert_array_equal, groups.compact_tree(plan, mask, start), fresh)


@pytest.mark.slow
def test_three_sp_rescale_starts_from_the_initial_weights_scaled_for_the_lost_inputs():
  config, setup, _, mask = three_sp_setup('three_sp_rescale')
  start = pruned_network.starting_variables(config, setup, mask)
  conv1 = setup.variables['params']['Conv_1']['kernel']
  np.testing.assert_allclose(start['params']['Conv_1']['kernel'], conv1 * np.sqrt(2.0), rtol=1e-6)  # half its inputs
  np.testing.assert_array_equal(start['params']['Conv_0']['kernel'], setup.variables['params']['Conv_0']['kernel'])
