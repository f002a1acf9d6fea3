"""Every criterion takes what Flax users hold: a TrainState or an NNX module in place of params + loss_fn."""

import functools
import inspect
import subprocess
import sys
import types
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state
from nets import MLP, BatchNormCNN, classification_batches

import prospr_jax

# nnx.BatchNorm keeps float32 running statistics; writing these float64 tests' batch statistics into them warns.
pytestmark = pytest.mark.filterwarnings('ignore:scatter inputs have incompatible types:FutureWarning')
ITERATIVE = {'sparsity': 0.5, 'rounds': 2}
CASES = {  # name -> (saliency function, its settings)
    'prospr': (prospr_jax.prospr_saliency, {}),
    'prospr_meta_gradient': (prospr_jax.prospr_meta_gradient, {}),
    'prospr_streamed': (prospr_jax.prospr_saliency_streamed, {}),
    'snip': (prospr_jax.snip_saliency, {}),
    'grasp': (prospr_jax.grasp_saliency, {}),
    'synflow': (prospr_jax.synflow_saliency, ITERATIVE),
    'iterative_snip': (prospr_jax.iterative_snip_saliency, ITERATIVE),
    'force': (prospr_jax.force_saliency, ITERATIVE),
    'magnitude': (prospr_jax.magnitude_saliency, {}),
    'random': (prospr_jax.random_saliency, {}),
}


class BatchNormTrainState(train_state.TrainState):
  """Flax's imagenet example: the BatchNorm state beside the params."""
  batch_stats: Any


def score(name, target, batches, **kwargs):
  """Run criterion ``name`` on ``target``; the streamed variant gets an iterator over the M + 1 batches."""
  fn, settings = CASES[name]
  if name == 'prospr_streamed':
    batches = iter(list(zip(*batches)))  # (x_k, y_k) for k = 0..M
  return fn(target, batches, **settings, **kwargs)


def assert_same_tree(actual, expected, rtol=1e-12):
  assert jax.tree.structure(actual, is_leaf=prospr_jax.masks.is_none) == jax.tree.structure(
      expected, is_leaf=prospr_jax.masks.is_none)
  jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=rtol, atol=1e-14), actual, expected)


@functools.cache
def linen_problem():
  """(model, variables with non-trivial running statistics, M = 2 batches) for a small BatchNorm CNN."""
  model = BatchNormCNN()
  batches = classification_batches(jax.random.key(0), 3, 6, (5, 5, 2), model.classes)
  variables = model.init(jax.random.key(1), batches[0][0])
  stats = jax.tree.map(lambda v: jax.random.normal(jax.random.key(2), v.shape, v.dtype), variables['batch_stats'])
  return model, {**variables, 'batch_stats': stats}, batches


def linen_state():
  model, variables, _ = linen_problem()
  return BatchNormTrainState.create(apply_fn=model.apply, params=variables['params'], tx=optax.sgd(0.1),
                                    batch_stats=variables['batch_stats'])


@functools.cache
def linen_reference(name):
  """Scores of ``name`` from plain params with the model's ``flax_loss_fn`` (``flax_apply_fn`` for SynFlow)."""
  model, variables, batches = linen_problem()
  model_fn = ({'apply_fn': prospr_jax.flax_apply_fn(model, variables, absolute_state=True)} if name == 'synflow'
              else {'loss_fn': prospr_jax.flax_loss_fn(model, variables)})
  return score(name, variables['params'], batches, **model_fn)


class NnxCNN(nnx.Module):
  """Conv, BatchNorm, relu, pooled, one Linear (in a list, so paths hold an index)."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv = nnx.Conv(2, 4, (3, 3), param_dtype=jnp.float64, rngs=rngs)
    self.bn = nnx.BatchNorm(4, param_dtype=jnp.float64, rngs=rngs)
    self.layers = nnx.List([nnx.Linear(4, 3, param_dtype=jnp.float64, rngs=rngs)])

  def __call__(self, x):
    return self.layers[0](nnx.relu(self.bn(self.conv(x))).mean(axis=(1, 2)))


def nnx_module():
  """A fresh NnxCNN with running statistics away from their (0, 1) start."""
  model = NnxCNN(nnx.Rngs(3))
  model.bn.mean[...] = -0.5 * jnp.arange(4, dtype=jnp.float32)  # nnx keeps running statistics in float32
  model.bn.var[...] = 2.0 + jnp.arange(4, dtype=jnp.float32)
  return model


def nnx_forward(params, x, stats=None):
  """NnxCNN written out by hand on its pure param dict: batch statistics, or the given ``(mean, var)``."""
  h = jax.lax.conv_general_dilated(x, params['conv']['kernel'], (1, 1), 'SAME',
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + params['conv']['bias']
  mean, var = (h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2))) if stats is None else stats
  h = (h - mean) / jnp.sqrt(var + 1e-5) * params['bn']['scale'] + params['bn']['bias']
  dense = params['layers'][0]
  return jax.nn.relu(h).mean(axis=(1, 2)) @ dense['kernel'] + dense['bias']


def nnx_hand_loss(params, batch):
  x, y = batch
  return prospr_jax.softmax_cross_entropy(nnx_forward(params, x), y)


@functools.cache
def nnx_reference(name):
  """Scores of ``name`` from the module's pure param dict with the hand-written loss (or eval apply_fn)."""
  model, (_, _, batches) = nnx_module(), linen_problem()
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  stats = (jnp.abs(model.bn.mean[...]).astype(jnp.float64), jnp.abs(model.bn.var[...]).astype(jnp.float64))
  model_fn = ({'apply_fn': lambda p, x: nnx_forward(p, x, stats)} if name == 'synflow'
              else {'loss_fn': nnx_hand_loss})
  return score(name, params, batches, **model_fn)


@pytest.mark.parametrize('name', [n if n == 'snip' else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(CASES)])
def test_a_train_state_with_batch_stats_scores_like_params_with_flax_loss_fn(name):
  _, _, batches = linen_problem()
  assert_same_tree(score(name, linen_state(), batches), linen_reference(name))


@pytest.mark.parametrize('name', [n if n == 'snip' else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(CASES)])
def test_an_nnx_module_scores_like_its_pure_params_with_a_hand_written_loss(name):
  _, _, batches = linen_problem()
  assert_same_tree(score(name, nnx_module(), batches), nnx_reference(name), rtol=1e-9)


@pytest.mark.slow
def test_the_shortest_call_takes_a_train_state_and_batches_only():
  model = MLP()
  batches = classification_batches(jax.random.key(0), 3, 10, (6,), model.classes)
  params = model.init(jax.random.key(1), batches[0][0])['params']
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.sgd(0.1))
  scores = prospr_jax.prospr_saliency(state, batches)
  expected = prospr_jax.prospr_saliency(params, batches, loss_fn=prospr_jax.flax_loss_fn(model, {'params': params}))
  assert_same_tree(scores, expected)


def test_train_state_scores_mirror_state_params_and_their_mask_applies_to_them():
  state = linen_state()
  scores = prospr_jax.snip_saliency(state, linen_problem()[2])
  assert jax.tree.structure(scores, is_leaf=prospr_jax.masks.is_none) == jax.tree.structure(state.params)
  assert scores['Conv_0']['bias'] is None and scores['BatchNorm_0']['scale'] is None
  masks = prospr_jax.global_topk_mask(scores, 0.75)
  pruned = state.replace(params=prospr_jax.apply_mask(state.params, masks))
  kept = sum(int(m.sum()) for m in jax.tree.leaves(masks))
  total = sum(m.size for m in jax.tree.leaves(masks))
  assert kept == int(np.ceil(total * 0.25))
  kernels = [pruned.params[layer]['kernel'] for layer in ('Conv_0', 'Conv_1', 'Dense_0')]
  assert sum(int(jnp.count_nonzero(k)) for k in kernels) == kept


def test_nnx_scores_are_the_pure_dict_of_the_param_state_with_none_off_kernels():
  model = nnx_module()
  scores = prospr_jax.snip_saliency(model, linen_problem()[2])
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  assert jax.tree.structure(scores, is_leaf=prospr_jax.masks.is_none) == jax.tree.structure(params)
  assert scores['layers'][0]['kernel'].shape == (4, 3)
  assert scores['conv']['bias'] is None and scores['bn']['scale'] is None


def test_nnx_prunable_sees_attribute_paths_with_list_indices_as_strings():
  seen = []

  def prunable(path, leaf):
    seen.append(path)
    return path == ('layers', '0', 'kernel')

  scores = prospr_jax.magnitude_saliency(nnx_module(), prunable=prunable)
  assert {('conv', 'kernel'), ('bn', 'scale'), ('layers', '0', 'bias')} <= set(seen)
  assert scores['conv']['kernel'] is None and scores['layers'][0]['kernel'] is not None


def test_the_documented_recipe_applies_nnx_scores_as_a_mask_to_the_module():
  model = nnx_module()
  masks = prospr_jax.global_topk_mask(prospr_jax.snip_saliency(model, linen_problem()[2]), 0.5)
  params = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(params, prospr_jax.apply_mask(nnx.to_pure_dict(params), masks))
  nnx.update(model, params)
  np.testing.assert_array_equal(model.conv.kernel[...] != 0, masks['conv']['kernel'])
  np.testing.assert_array_equal(model.layers[0].kernel[...] != 0, masks['layers'][0]['kernel'])


@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_scoring_leaves_the_nnx_module_state_and_mode_unchanged(mode):
  model = nnx_module()
  getattr(model, mode)()
  before = jax.tree.map(np.array, nnx.state(model))
  scores = prospr_jax.prospr_saliency(model, linen_problem()[2])
  jax.tree.map(np.testing.assert_array_equal, nnx.state(model), before)  # running statistics included
  assert model.bn.use_running_average == (mode == 'eval')
  assert_same_tree(scores, nnx_reference('prospr'), rtol=1e-9)  # batch statistics, whatever the mode


@pytest.mark.slow
def test_a_loss_fn_given_with_a_model_is_used_on_its_params():
  model, variables, batches = linen_problem()
  hot = prospr_jax.flax_loss_fn(model, variables, temperature=200.0)
  scores = prospr_jax.grasp_saliency(linen_state(), batches, loss_fn=hot)
  assert_same_tree(scores, prospr_jax.grasp_saliency(variables['params'], batches, loss_fn=hot))
  assert not np.allclose(scores['Conv_0']['kernel'], linen_reference('grasp')['Conv_0']['kernel'])


def test_an_nnx_module_with_a_loss_fn_passes_it_the_pure_params():
  scores = prospr_jax.snip_saliency(nnx_module(), linen_problem()[2], loss_fn=nnx_hand_loss)
  assert_same_tree(scores, nnx_reference('snip'), rtol=1e-9)


@pytest.mark.parametrize('name, fix', [('prospr', 'loss_fn='), ('snip', 'loss_fn='), ('synflow', 'apply_fn=')])
def test_a_params_tree_without_its_model_function_raises_a_value_error_naming_the_fix(name, fix):
  _, variables, batches = linen_problem()
  with pytest.raises(ValueError, match=f'{fix}.*TrainState or an NNX module'):
    score(name, variables['params'], batches)


def test_a_train_state_whose_apply_fn_is_not_a_linen_method_asks_for_loss_fn():
  state = linen_state().replace(apply_fn=jax.jit(linen_problem()[0].apply))
  with pytest.raises(ValueError, match='apply_fn=model.apply, or pass loss_fn='):
    prospr_jax.snip_saliency(state, linen_problem()[2])


def test_decorated_criteria_keep_their_names_docs_and_settings():
  assert prospr_jax.prospr_saliency.__name__ == 'prospr_saliency'
  assert 'meta-gradient' in prospr_jax.prospr_saliency.__doc__
  parameters = inspect.signature(prospr_jax.force_saliency).parameters
  assert parameters['loss_fn'].default is None and parameters['rounds'].default == 60


def test_any_object_with_apply_fn_params_and_batch_stats_counts_as_a_train_state():
  model, variables, batches = linen_problem()
  state = types.SimpleNamespace(apply_fn=model.apply, params=variables['params'],
                                batch_stats=variables['batch_stats'])
  assert_same_tree(prospr_jax.snip_saliency(state, batches), linen_reference('snip'))


@pytest.mark.slow
def test_the_target_may_be_passed_by_keyword():
  _, _, batches = linen_problem()
  assert_same_tree(prospr_jax.snip_saliency(params=linen_state(), batches=batches), linen_reference('snip'))


def test_dict_batches_with_image_and_label_work_for_an_nnx_module():
  x, y = linen_problem()[2]
  scores = prospr_jax.snip_saliency(nnx_module(), {'image': x, 'label': y})
  assert_same_tree(scores, nnx_reference('snip'), rtol=1e-9)



@pytest.mark.slow
def test_the_criteria_import_no_flax():
  code = 'import sys, prospr_jax.criteria; print(sorted(m for m in sys.modules if m.split(".")[0] == "flax"))'
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
  assert out.strip() == '[]'
