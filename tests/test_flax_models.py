"""The shortest call on models as users write them: a linen model bridged into NNX, a train flag not named
``train``, a TrainState without its batch_stats, one-hot labels, and repeated calls that reuse one program."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state
from nets import BatchNormCNN, classification_batches

import prospr_jax

TRACES = []
# nnx.BatchNorm keeps float32 running statistics; writing these float64 tests' batch statistics into them warns.
pytestmark = pytest.mark.filterwarnings('ignore:scatter inputs have incompatible types:FutureWarning')


class BatchNormState(train_state.TrainState):
  batch_stats: Any


class TrainingFlagCNN(nn.Module):
  """BatchNormCNN with its train flag named ``training`` (off by default), counting its traces."""

  @nn.compact
  def __call__(self, x, training: bool = False):
    TRACES.append(type(self).__name__)
    for features in (4, 6):
      x = nn.relu(nn.BatchNorm(use_running_average=not training, param_dtype=jnp.float64)(
          nn.Conv(features, (3, 3), param_dtype=jnp.float64)(x)))
    return nn.Dense(3, param_dtype=jnp.float64)(x.mean(axis=(1, 2)))


def batches():
  return classification_batches(jax.random.key(0), 3, 6, (5, 5, 2), 3)


def linen_state(model, batch_stats=True):
  variables = model.init(jax.random.key(1), batches()[0][0])
  stats = {'batch_stats': variables['batch_stats']} if batch_stats else {}
  cls = BatchNormState if batch_stats else train_state.TrainState
  return cls.create(apply_fn=model.apply, params=variables['params'], tx=optax.sgd(0.1), **stats), variables


def assert_same_scores(actual, expected):
  assert jax.tree.structure(actual, is_leaf=prospr_jax.masks.is_none) == jax.tree.structure(
      expected, is_leaf=prospr_jax.masks.is_none)
  jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-15), actual, expected)


@pytest.mark.parametrize('name', ['prospr_saliency', 'snip_saliency', 'synflow_saliency'])
def test_a_linen_model_bridged_into_nnx_scores_like_the_linen_model(name):
  model = BatchNormCNN()
  bridged = nnx.bridge.ToNNX(model, rngs=nnx.Rngs(0)).lazy_init(batches()[0][0])
  variables = {'params': nnx.to_pure_dict(nnx.state(bridged, nnx.Param)),
               'batch_stats': nnx.to_pure_dict(nnx.state(bridged, nnx.BatchStat))}
  fn = getattr(prospr_jax, name)
  settings = {'synflow_saliency': {'sparsity': 0.5, 'rounds': 2},
              'prospr_saliency': {'first_order': True}}.get(name, {})  # the same loss as exact, a third of its compile
  model_fn = ({'apply_fn': prospr_jax.flax_apply_fn(model, variables, absolute_state=True)} if 'synflow' in name
              else {'loss_fn': prospr_jax.flax_loss_fn(model, variables)})
  data = batches()
  expected = fn(variables['params'], data, **settings, **model_fn)
  assert_same_scores(fn(bridged, data, **settings), expected)
  before = nnx.to_pure_dict(nnx.state(bridged, nnx.BatchStat))
  jax.tree.map(np.testing.assert_array_equal, before, variables['batch_stats'])  # the module is not changed


def test_a_batch_norm_model_whose_train_flag_is_not_named_train_is_refused_naming_train_kwarg():
  state, variables = linen_state(TrainingFlagCNN())
  with pytest.raises(ValueError, match=r"no `train` argument.*train_kwarg='training'"):
    prospr_jax.snip_saliency(state, batches())
  with pytest.raises(ValueError, match=r"train_kwarg='training'"):  # apply's own arguments set no mode
    prospr_jax.flax_loss_fn(TrainingFlagCNN(), variables, rngs={'dropout': jax.random.key(0)})


def test_train_kwarg_runs_the_model_in_train_mode_like_flax_loss_fn_with_training_true():
  model = TrainingFlagCNN()
  state, variables = linen_state(model)
  expected = prospr_jax.snip_saliency(variables['params'], batches(),
                                      loss_fn=prospr_jax.flax_loss_fn(model, variables, training=True))
  assert_same_scores(prospr_jax.snip_saliency(state, batches(), train_kwarg='training'), expected)
  eval_mode = prospr_jax.snip_saliency(variables['params'], batches(),
                                       loss_fn=prospr_jax.flax_loss_fn(model, variables, train_kwarg=None))
  assert not np.allclose(eval_mode['Conv_0']['kernel'], expected['Conv_0']['kernel'])


def test_train_kwarg_with_a_params_tree_is_refused():
  _, variables = linen_state(BatchNormCNN())
  with pytest.raises(ValueError, match='flax_loss_fn'):
    prospr_jax.snip_saliency(variables['params'], batches(), loss_fn=lambda p, b: 0.0, train_kwarg='training')


def one_line_error(fn, match):
  with pytest.raises(ValueError, match=match) as info:
    fn()
  notes = ' '.join(getattr(info.value, '__notes__', []))
  assert '\n' not in str(info.value) and 'prospr_jax' not in notes  # no note blaming the batches' shape


def test_a_plain_train_state_on_a_batch_norm_model_says_to_add_batch_stats():
  state, _ = linen_state(BatchNormCNN(), batch_stats=False)
  one_line_error(lambda: prospr_jax.prospr_saliency(state, batches()), r"batch_stats.*batch_stats=variables")


def test_one_hot_labels_say_to_pass_class_indices():
  state, _ = linen_state(BatchNormCNN())
  x, y = batches()
  one_line_error(lambda: prospr_jax.prospr_saliency(state, (x, jax.nn.one_hot(y, 3))), r'one-hot.*argmax\(-1\)')


def test_a_second_call_on_the_same_train_state_does_not_retrace_the_model():
  state, _ = linen_state(TrainingFlagCNN())
  TRACES.clear()
  first = prospr_jax.prospr_saliency(state, batches(), train_kwarg='training')
  traced = len(TRACES)
  again = prospr_jax.prospr_saliency(state.replace(step=1), batches(), train_kwarg='training')
  assert traced > 0 and len(TRACES) == traced
  assert_same_scores(again, first)


def test_new_batch_stats_are_not_served_a_stale_program():
  """SynFlow's eval mode reads the running statistics: a state with other statistics gets its own scores."""
  state, variables = linen_state(BatchNormCNN())
  other = jax.tree.map(lambda v: v + 1.0, state.batch_stats)
  for stats in (state.batch_stats, other, state.batch_stats):
    apply_fn = prospr_jax.flax_apply_fn(BatchNormCNN(), {**variables, 'batch_stats': stats}, absolute_state=True)
    expected = prospr_jax.synflow_saliency(variables['params'], batches(), apply_fn=apply_fn, sparsity=0.5, rounds=1)
    got = prospr_jax.synflow_saliency(state.replace(batch_stats=stats), batches(), sparsity=0.5, rounds=1)
    assert_same_scores(got, expected)


class CountingNnx(nnx.Module):
  def __init__(self, rngs):
    self.conv = nnx.Conv(2, 4, (3, 3), param_dtype=jnp.float64, rngs=rngs)
    self.bn = nnx.BatchNorm(4, param_dtype=jnp.float64, rngs=rngs)
    self.head = nnx.Linear(4, 3, param_dtype=jnp.float64, rngs=rngs)

  def __call__(self, x):
    TRACES.append('nnx')
    return self.head(nnx.relu(self.bn(self.conv(x))).mean(axis=(1, 2)))


def test_a_second_call_on_the_same_nnx_module_does_not_retrace_it():
  model = CountingNnx(nnx.Rngs(0))
  TRACES.clear()
  first = prospr_jax.snip_saliency(model, batches())
  traced = len(TRACES)
  assert traced > 0
  assert_same_scores(prospr_jax.snip_saliency(model, batches()), first)
  assert len(TRACES) == traced
