"""Compaction: the narrow network computes what the masked one computes, for every family of the zoo (float64)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import prospr_jax
from prospr_jax import losses, masks as masks_lib
from prospr_jax.channels import groups
from prospr_jax.models import compaction, get_model, plans
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
# The full-depth nets at tiny widths, which differ between stages and between a block's inner convs and its
# stream, and repeat within a stage as in the dense nets (XLA reuses the repeated blocks' kernels: faster compiles).
FULL_DEPTH = {
    'vgg16': ({'widths': (4, 4, 5, 5, 3, 3, 3, 6, 6, 6, 4, 4, 4)}, (16, 16, 3)),
    'vgg19_imagenet_head': ({'widths': (3, 3, 5, 5, 4, 4, 4, 4, 6, 6, 6, 6, 3, 3, 3, 3), 'imagenet_head': True,
                             'hidden': (6, 5), 'dropout_rate': 0.0}, (16, 16, 3)),
    'resnet34': ({'stage_widths': (4, 6, 5, 7), 'block_widths': ((3,),) * 3 + ((4,),) * 4 + ((5,),) * 6 + ((3,),) * 3},
                 (16, 16, 3)),  # the ImageNet stem: 7x7/2 conv and max-pool
    'resnet50_small_input': ({'small_input': True, 'stem_width': 3, 'stage_widths': (6, 5, 7, 4),
                              'block_widths': ((2, 3),) * 3 + ((4, 3),) * 4 + ((3, 2),) * 6 + ((2, 4),) * 3},
                             (8, 8, 3)),
    'resnet18_small_input': ({'small_input': True, 'stage_widths': (5, 4, 6, 3),
                              'block_widths': ((3,),) * 2 + ((5,),) * 2 + ((4,),) * 2 + ((2,),) * 2}, (8, 8, 3)),
}
CONSTRUCTORS = {'vgg13_imagenet_head': functools.partial(get_model, 'vgg13'),
                'bottleneck': lambda n, **kw: ResNet(block=Bottleneck, num_classes=n, **kw),
                'vgg19_imagenet_head': functools.partial(get_model, 'vgg19'),
                'resnet50_small_input': functools.partial(get_model, 'resnet50'),
                'resnet18_small_input': functools.partial(get_model, 'resnet18')}


@functools.partial(jax.jit, static_argnames='model')
def perturbed_init(model, x):
  """float64 variables with non-trivial biases, BatchNorm offsets and statistics (variances stay positive)."""
  variables = jax.tree.map(lambda v: v.astype(jnp.float64), model.init(jax.random.key(0), x, train=False))
  leaves, treedef = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  return jax.tree.unflatten(treedef, [v + 0.2 * jax.random.uniform(k, v.shape, v.dtype) for k, v in zip(keys, leaves)])


def host_init(model, x):
  """float64 variables drawn by numpy, like ``perturbed_init``'s but with no ``model.init`` to compile (26 s of CPU for
  the tiny ResNet-50): kernels N(0, 1 / fan-in); biases, BatchNorm offsets and means U(0, 0.2); BatchNorm scales and
  variances 1 + U(0, 0.2)."""
  rng = np.random.default_rng(0)
  def draw(path, leaf):
    name = masks_lib.path_names(path)[-1]
    if name == 'kernel':
      return rng.normal(0, 1 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape)
    return (name in ('scale', 'var')) + 0.2 * rng.random(leaf.shape)
  abstract = plans.abstract_variables(model, x.shape[1:])
  return jax.tree_util.tree_map_with_path(lambda p, v: jnp.asarray(draw(p, v), jnp.float64), abstract)


@functools.cache
def network(family):
  """(model, float64 variables, inputs, labels)."""
  kwargs, shape = {**FAMILIES, **FULL_DEPTH}[family]
  model = CONSTRUCTORS.get(family, functools.partial(get_model, family))(5, **kwargs)
  x = jax.random.normal(jax.random.key(1), (4, *shape), jnp.float64)
  return model, (host_init if family in FULL_DEPTH else perturbed_init)(model, x), x, jnp.arange(4) % 5


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


def _fast_compile_options() -> dict[str, bool]:
  """XLA:CPU's older fusion emitters where this jaxlib still has them (they compile these float64 programs about
  twice as fast; what they compute is the same); no option where it does not (jaxlib 0.12 removed it)."""
  options = {'xla_cpu_use_fusion_emitters': False}
  try:
    jax.jit(lambda x: x + 1, compiler_options=options).lower(0.0).compile()
  except jax.errors.JaxRuntimeError:
    return {}
  return options


FAST_COMPILE = _fast_compile_options()
masked_params = jax.jit(prospr_jax.apply_mask, compiler_options=FAST_COMPILE)  # eager: a compile per leaf shape


@functools.partial(jax.jit, static_argnames='model', compiler_options=FAST_COMPILE)
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
  masked = {**variables, 'params': masked_params(variables['params'], groups.expand(plan, mask, variables['params']))}
  narrow, small = prospr_jax.compact(model, variables, mask)
  compaction.check_shapes(narrow, small, x.shape[1:])
  *logits, grads = outputs_and_gradients(model, masked, x, y)
  *compact_logits, compact_grads = outputs_and_gradients(narrow, small, x, y)
  for mode, expected, got in zip(('eval', 'train'), logits, compact_logits):
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(expected))), err_msg=mode)
  kept_grads = groups.compact_tree(plan, mask, grads)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), compact_grads, kept_grads)
  return narrow, small


@pytest.mark.parametrize('family', [pytest.param(f, marks=pytest.mark.slow) if f in (
    'bottleneck', 'resnet18', 'resnet20', 'vgg11', 'vgg13_imagenet_head') else f for f in sorted(FAMILIES)])
def test_the_compact_network_computes_the_masked_ones_outputs_and_gradients(family):
  model, variables, _, _ = network(family)
  plan = plans.channel_plan(model, variables['params'])
  assert_masked_equals_compact(family, random_mask(plan, 0.5))


@pytest.mark.parametrize('family, density, single', [
    ('vgg11', 0.2, 3), ('resnet20', 0.15, 0), ('resnet18', 0.8, None),
])
@pytest.mark.slow
def test_compaction_is_exact_at_several_sparsities_and_with_a_single_channel_left(family, density, single):
  model, variables, _, _ = network(family)
  plan = plans.channel_plan(model, variables['params'])
  mask = random_mask(plan, density, seed=3, single=single)
  narrow, _ = assert_masked_equals_compact(family, mask)
  if single is not None:
    assert plans.width_fields(narrow) and int(mask[plan.groups[single].name].sum()) == 1


@pytest.mark.parametrize('name, kwargs', [('resnet34', {}), ('resnet50', {'small_input': True}), ('vgg16', {}),
                                          ('vgg19', {'imagenet_head': True})])
@pytest.mark.slow
def test_full_depth_networks_compact_to_the_shapes_their_narrow_model_initialises(name, kwargs):
  model = get_model(name, 10, width=2 if name.startswith('resnet') else 1 / 32, **kwargs)
  variables = jax.tree.map(jnp.zeros_like, plans.abstract_variables(model, (32, 32, 3)))
  plan = plans.channel_plan(model, variables['params'])
  narrow, small = prospr_jax.compact(model, variables, random_mask(plan, 0.4, seed=7))
  compaction.check_shapes(narrow, small, (32, 32, 3))


def residual_streams(model):
  """Per stage, the BatchNorms whose outputs add into its residual stream, from the architecture (not the plan)."""
  kind, bottleneck = model.block.__name__, model.block.expansion != 1
  last, projection = (2, 3) if bottleneck else (1, 2)
  first = np.cumsum((0, *model.stage_sizes))
  return [([f'{kind}_{first[s]}/BatchNorm_{projection}'] if s > 0 or bottleneck else ['BatchNorm_0'])  # or the stem
          + [f'{kind}_{b}/BatchNorm_{last}' for b in range(first[s], first[s + 1])]
          for s in range(len(model.stage_sizes))]


def assert_each_stream_is_kept_or_removed_whole(model, variables, mask, narrow, small):
  """One mask entry per stream; every block adding into it keeps the same channels; the compact width is theirs."""
  for stage, norms in enumerate(residual_streams(model)):
    kernels = [norm.replace('BatchNorm_', 'Conv_') + '/kernel' for norm in norms]
    entries = [k for k in kernels if k in mask]
    assert len(entries) == 1, (stage, entries)
    kept = np.flatnonzero(mask[entries[0]])
    assert narrow.stage_widths[stage] == len(kept)
    for norm in norms:
      path = norm.split('/')
      for collection, leaf in (('params', 'scale'), ('params', 'bias'), ('batch_stats', 'mean'),
                               ('batch_stats', 'var')):
        dense, compact = variables[collection], small[collection]
        for name in path:
          dense, compact = dense[name], compact[name]
        np.testing.assert_array_equal(compact[leaf], np.asarray(dense[leaf])[kept], err_msg=f'{norm} {leaf}')


@pytest.mark.parametrize('family, density, single', [
    ('vgg16', 0.3, 'Conv_12/kernel'),  # the last conv: the classifier reads one channel
    ('vgg16', 0.7, 'Conv_0/kernel'),
    ('vgg19_imagenet_head', 0.3, 'Conv_15/kernel'),  # one channel of the flattened 7x7 map
    ('vgg19_imagenet_head', 0.7, 'Dense_1/kernel'),  # a hidden Dense layer
    ('resnet34', 0.3, 'BasicBlock_7/Conv_2/kernel'),  # stage 3's stream: 6 blocks' last convs and a projection
    ('resnet34', 0.7, 'BasicBlock_5/Conv_0/kernel'),
    ('resnet50_small_input', 0.3, 'Bottleneck_13/Conv_3/kernel'),  # the last stream, read by the classifier
    ('resnet50_small_input', 0.7, 'Conv_0/kernel'),  # the stem (free in bottleneck nets)
    ('resnet18_small_input', 0.3, 'Conv_0/kernel'),  # stage 1's stream, written by the stem too
    ('resnet18_small_input', 0.7, 'BasicBlock_4/Conv_0/kernel'),
])
@pytest.mark.slow
def test_full_depth_networks_compact_exactly_at_two_sparsities_with_one_channel_left_and_streams_kept_whole(
    family, density, single):
  model, variables, _, _ = network(family)
  plan = plans.channel_plan(model, variables['params'])
  mask = random_mask(plan, density, seed=8, single=plan.names().index(single))
  narrow, small = assert_masked_equals_compact(family, mask)
  node = small['params']
  for name in single.split('/'):
    node = node[name]
  assert node.shape[-1] == 1
  if isinstance(model, ResNet):
    assert_each_stream_is_kept_or_removed_whole(model, variables, mask, narrow, small)


@pytest.mark.slow
def test_the_compact_resnets_widths_are_the_kept_channels_of_each_tied_stream():
  model, variables, _, _ = network('resnet18')
  plan = plans.channel_plan(model, variables['params'])
  mask = random_mask(plan, 0.5, seed=4)
  narrow, _ = prospr_jax.compact(model, variables, mask)
  streams = ['Conv_0/kernel', 'BasicBlock_2/Conv_2/kernel', 'BasicBlock_4/Conv_2/kernel', 'BasicBlock_6/Conv_2/kernel']
  assert narrow.stage_widths == tuple(int(mask[name].sum()) for name in streams)
  assert narrow.block_widths == tuple((int(mask[f'BasicBlock_{b}/Conv_0/kernel'].sum()),) for b in range(8))


@pytest.mark.slow
def test_resnet20s_compact_shortcut_pads_only_the_kept_padding_channels():
  model, variables, _, _ = network('resnet20')  # stage widths 4, 8, 16: pads (2, 2) and (4, 4)
  plan = plans.channel_plan(model, variables['params'])
  mask = groups.ones(plan)
  mask['OptionABlock_3/Conv_1/kernel'] = np.array([False, True, False, False])  # stage 2 keeps 1 low, 0 high
  mask['OptionABlock_6/Conv_1/kernel'][:] = False  # stage 3 adds no channel of its own
  narrow, _ = assert_masked_equals_compact('resnet20', mask)
  assert narrow.shortcut_pads == ((1, 0), (0, 0)) and narrow.stage_widths == (4, 5, 5)


@pytest.mark.slow
def test_embedding_the_compact_variables_gives_back_the_masked_ones():
  model, variables, _, _ = network('resnet20')
  plan = plans.channel_plan(model, variables['params'])
  mask = random_mask(plan, 0.5, seed=5)
  full = groups.expand(plan, mask, variables['params'])
  masked = prospr_jax.apply_mask(variables['params'], full)
  small = groups.compact_tree(plan, mask, masked)
  zeros = jax.tree.map(jnp.zeros_like, variables['params'])
  jax.tree.map(np.testing.assert_array_equal, groups.embed(plan, mask, small, zeros), masked)


@pytest.mark.slow
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


@pytest.mark.slow
def test_compaction_refuses_bad_input_with_a_message():
  model, variables, _, _ = network('vgg11')
  plan = plans.channel_plan(model, variables['params'])
  mask = groups.ones(plan)
  other_model, other_variables, _, _ = network('small_cnn')
  with pytest.raises(ValueError, match='does not fit this VGG .is it from another model.*missing Conv_2/kernel'):
    prospr_jax.compact(model, variables, groups.ones(plans.channel_plan(other_model, other_variables['params'])))
  with pytest.raises(ValueError, match='per-weight entries.*channel mask'):
    prospr_jax.compact(model, variables, masks_lib.all_ones_mask(variables['params']))
  with pytest.raises(ValueError, match='removes every channel of Conv_3/kernel.*keep_one_per_layer'):
    prospr_jax.compact(model, variables, {**mask, 'Conv_3/kernel': np.zeros(plan.groups[3].size, bool)})
  unknown = Unknown()
  with pytest.raises(ValueError, match='do not know the architecture Unknown; they know LeNet300100'):
    prospr_jax.compact(unknown, unknown.init(jax.random.key(0), jnp.ones((1, 2))), mask)
