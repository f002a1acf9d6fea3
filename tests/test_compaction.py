"""Compaction: the narrow network computes what the masked one computes, for every family of the zoo (float64)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import prospr_jax
from prospr_jax import channels, compaction, losses, masks as masks_lib
from prospr_jax.models import get_model, plans
from prospr_jax.models.resnet import Bottleneck, ResNet

FAMILIES = {  # name: (model kwargs, input shape); ResNet-50's blocks in a shallow net (compile time)
    'small_cnn': ({}, (8, 8, 1)),
    'lenet5': ({}, (16, 16, 1)),
    'lenet300_100': ({'widths': (12, 8)}, (8, 8, 1)),
    'vgg11': ({'width': 1 / 16}, (16, 16, 3)),
    'vgg13_imagenet_head': ({'width': 1 / 16, 'imagenet_head': True, 'hidden': (8, 6), 'dropout_rate': 0.0},
                            (16, 16, 3)),
    'resnet20': ({'width': 4}, (8, 8, 3)),
    'resnet18': ({'width': 2}, (16, 16, 3)),  # the ImageNet stem: 7x7/2 conv and max-pool
    'bottleneck': ({'width': 2, 'stage_sizes': (2, 1, 1, 1), 'small_input': True}, (8, 8, 3)),  # ResNet-50's blocks
}
CONSTRUCTORS = {'vgg13_imagenet_head': functools.partial(get_model, 'vgg13'),
                'bottleneck': lambda n, **kw: ResNet(block=Bottleneck, num_classes=n, **kw)}


@functools.partial(jax.jit, static_argnames='model')
def perturbed_init(model, x):
  """float64 variables with non-trivial biases, BatchNorm offsets and statistics (variances stay positive)."""
  variables = jax.tree.map(lambda v: v.astype(jnp.float64), model.init(jax.random.key(0), x, train=False))
  leaves, treedef = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  return jax.tree.unflatten(treedef, [v + 0.2 * jax.random.uniform(k, v.shape, v.dtype) for k, v in zip(keys, leaves)])


@functools.cache
def network(family):
  """(model, float64 variables, inputs, labels)."""
  kwargs, shape = FAMILIES[family]
  model = CONSTRUCTORS.get(family, functools.partial(get_model, family))(5, **kwargs)
  x = jax.random.normal(jax.random.key(1), (4, *shape), jnp.float64)
  return model, perturbed_init(model, x), x, jnp.arange(4) % 5


def random_mask(plan, density, seed=0, single=None):
  """Each channel kept with probability ``density``, at least one per group; ``single``: a group keeps exactly one."""
  rng = np.random.default_rng(seed)
  mask = {g.name: rng.random(g.size) < density for g in plan.groups}
  for g in plan.groups:
    if not mask[g.name].any() and not g.may_empty:
      mask[g.name][rng.integers(g.size)] = True
  if single is not None:
    name = plan.groups[single].name
    mask[name] = np.arange(plan.groups[single].size) == plan.groups[single].size - 1
  return mask


@functools.partial(jax.jit, static_argnames='model')
def outputs_and_gradients(model, variables, x, y):
  """Eval-mode logits; train-mode logits and the cross-entropy's gradient w.r.t. the params (batch statistics)."""
  def loss(params):
    logits = model.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats'])[0]
    return losses.softmax_cross_entropy(logits, y), logits
  (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(variables['params'])
  return model.apply(variables, x, train=False), logits, grads


def assert_masked_equals_compact(family, mask):
  model, variables, x, y = network(family)
  plan = plans.channel_plan(model, variables['params'])
  masked = {**variables, 'params': prospr_jax.apply_mask(variables['params'], channels.expand(plan, mask,
                                                                                              variables['params']))}
  narrow, small = prospr_jax.compact(model, variables, mask)
  compaction.check_shapes(narrow, small, x.shape[1:])
  *logits, grads = outputs_and_gradients(model, masked, x, y)
  *compact_logits, compact_grads = outputs_and_gradients(narrow, small, x, y)
  for mode, expected, got in zip(('eval', 'train'), logits, compact_logits):
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(expected))), err_msg=mode)
  kept_grads = channels.compact_tree(plan, mask, grads)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), compact_grads, kept_grads)
  return narrow


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_the_compact_network_computes_the_masked_ones_outputs_and_gradients(family):
  model, variables, _, _ = network(family)
  plan = plans.channel_plan(model, variables['params'])
  assert_masked_equals_compact(family, random_mask(plan, 0.5))


@pytest.mark.parametrize('family, density, single', [
    ('vgg11', 0.2, 3), ('resnet20', 0.15, 0), ('resnet18', 0.8, None),
])
def test_compaction_is_exact_at_several_sparsities_and_with_a_single_channel_left(family, density, single):
  model, variables, _, _ = network(family)
  plan = plans.channel_plan(model, variables['params'])
  mask = random_mask(plan, density, seed=3, single=single)
  narrow = assert_masked_equals_compact(family, mask)
  if single is not None:
    assert plans.width_fields(narrow) and int(mask[plan.groups[single].name].sum()) == 1


@pytest.mark.parametrize('name, kwargs', [('resnet34', {}), ('resnet50', {'small_input': True}), ('vgg16', {}),
                                          ('vgg19', {'imagenet_head': True})])
def test_full_depth_networks_compact_to_the_shapes_their_narrow_model_initialises(name, kwargs):
  model = get_model(name, 10, width=2 if name.startswith('resnet') else 1 / 32, **kwargs)
  variables = jax.tree.map(jnp.zeros_like, plans.abstract_variables(model, (32, 32, 3)))
  plan = plans.channel_plan(model, variables['params'])
  narrow, small = prospr_jax.compact(model, variables, random_mask(plan, 0.4, seed=7))
  compaction.check_shapes(narrow, small, (32, 32, 3))


def test_the_compact_resnets_widths_are_the_kept_channels_of_each_tied_stream():
  model, variables, _, _ = network('resnet18')
  plan = plans.channel_plan(model, variables['params'])
  mask = random_mask(plan, 0.5, seed=4)
  narrow, _ = prospr_jax.compact(model, variables, mask)
  streams = ['Conv_0/kernel', 'BasicBlock_2/Conv_2/kernel', 'BasicBlock_4/Conv_2/kernel', 'BasicBlock_6/Conv_2/kernel']
  assert narrow.stage_widths == tuple(int(mask[name].sum()) for name in streams)
  assert narrow.block_widths == tuple((int(mask[f'BasicBlock_{b}/Conv_0/kernel'].sum()),) for b in range(8))


def test_resnet20s_compact_shortcut_pads_only_the_kept_padding_channels():
  model, variables, _, _ = network('resnet20')  # stage widths 4, 8, 16: pads (2, 2) and (4, 4)
  plan = plans.channel_plan(model, variables['params'])
  mask = channels.ones(plan)
  mask['OptionABlock_3/Conv_1/kernel'] = np.array([False, True, False, False])  # stage 2 keeps 1 low, 0 high
  mask['OptionABlock_6/Conv_1/kernel'][:] = False  # stage 3 adds no channel of its own
  narrow = assert_masked_equals_compact('resnet20', mask)
  assert narrow.shortcut_pads == ((1, 0), (0, 0)) and narrow.stage_widths == (4, 5, 5)


def test_embedding_the_compact_variables_gives_back_the_masked_ones():
  model, variables, _, _ = network('resnet20')
  plan = plans.channel_plan(model, variables['params'])
  mask = random_mask(plan, 0.5, seed=5)
  full = channels.expand(plan, mask, variables['params'])
  masked = prospr_jax.apply_mask(variables['params'], full)
  small = channels.compact_tree(plan, mask, masked)
  zeros = jax.tree.map(jnp.zeros_like, variables['params'])
  jax.tree.map(np.testing.assert_array_equal, channels.embed(plan, mask, small, zeros), masked)


def test_a_saved_compact_network_is_rebuilt_by_name_with_the_same_outputs(tmp_path):
  model, variables, x, _ = network('resnet20')
  plan = plans.channel_plan(model, variables['params'])
  narrow, small = prospr_jax.compact(model, variables, random_mask(plan, 0.5, seed=6))
  compaction.save_compact(tmp_path, 'resnet20', 5, {'width': 4}, narrow, small)
  rebuilt, loaded = prospr_jax.load_compact(tmp_path)
  assert rebuilt == narrow
  np.testing.assert_array_equal(rebuilt.apply(loaded, x, train=False), narrow.apply(small, x, train=False))


class Unknown(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(3)(nn.relu(nn.Dense(4)(x)))


def test_compaction_refuses_bad_input_with_a_message():
  model, variables, _, _ = network('vgg11')
  plan = plans.channel_plan(model, variables['params'])
  mask = channels.ones(plan)
  other_model, other_variables, _, _ = network('small_cnn')
  with pytest.raises(ValueError, match='does not fit this VGG .is it from another model.*missing Conv_2/kernel'):
    prospr_jax.compact(model, variables, channels.ones(plans.channel_plan(other_model, other_variables['params'])))
  with pytest.raises(ValueError, match='per-weight entries.*channel mask'):
    prospr_jax.compact(model, variables, masks_lib.all_ones_mask(variables['params']))
  with pytest.raises(ValueError, match='removes every channel of Conv_3/kernel.*keep_one_per_layer'):
    prospr_jax.compact(model, variables, {**mask, 'Conv_3/kernel': np.zeros(plan.groups[3].size, bool)})
  unknown = Unknown()
  with pytest.raises(ValueError, match='do not know the architecture Unknown; they know LeNet300100'):
    prospr_jax.compact(unknown, unknown.init(jax.random.key(0), jnp.ones((1, 2))), mask)
