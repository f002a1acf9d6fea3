"""Where a channel's mask entry sits when it is scored: after its normalisation, or on its writers' kernels."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import prospr_jax
from prospr_jax import losses
from prospr_jax.channels import scores as channel_scores
from prospr_jax.criteria import registry, scores as scores_lib
from prospr_jax.criteria.snip import snip_gradient
from prospr_jax.models import get_model, plans


def float64_net(name, shape, **kwargs):
  model = get_model(name, 3, **kwargs)
  variables = model.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False)
  variables = jax.tree.map(lambda x: x.astype(jnp.float64), variables)
  batches = (jax.random.normal(jax.random.key(1), (1, 6, *shape), jnp.float64), jnp.array([[0, 1, 2, 0, 1, 2]]))
  return model, variables, plans.channel_plan(model, variables['params']), batches


def raw_snip(params, batches, *, loss_fn, structured, prunable):
  """``dL/dc`` at ``c = 1``, not normalised: what a structured SNIP score is before dividing by the total."""
  mask = scores_lib.data_mask_variables(params, batches, loss_fn=loss_fn, structured=structured, prunable=prunable)
  return snip_gradient(params, batches, mask, loss_fn=loss_fn)


def raw_channel_snip(model, variables, plan, batches, gate):
  loss_fn = prospr_jax.flax_loss_fn(model, variables)
  return channel_scores.score_channels(raw_snip, plan, variables['params'], batches, loss_fn=loss_fn, gate=gate)


def with_batchnorm_epsilon(monkeypatch, epsilon):
  from prospr_jax.models import small_cnn
  monkeypatch.setattr(small_cnn, 'batch_norm', lambda train: nn.BatchNorm(
      use_running_average=not train, momentum=0.9, use_fast_variance=False, epsilon=epsilon))


@pytest.mark.slow
def test_structured_snip_scores_do_not_scale_with_batchnorms_epsilon(monkeypatch):
  gate = registry.get_criterion('snip').channel_gate
  raw = {}
  for epsilon in (1e-5, 1e-3):
    with_batchnorm_epsilon(monkeypatch, epsilon)
    raw[epsilon] = raw_channel_snip(*float64_net('small_cnn', (8, 8, 1), widths=(4, 6)), gate)
  for name in raw[1e-5]:
    ratio = np.abs(raw[1e-3][name]).sum() / np.abs(raw[1e-5][name]).sum()
    assert 0.95 < ratio < 1.05, (name, ratio)


def test_a_gate_on_the_kernels_before_batchnorm_scores_only_its_epsilon(monkeypatch):
  raw = {}
  for epsilon in (1e-5, 1e-3):
    with_batchnorm_epsilon(monkeypatch, epsilon)
    raw[epsilon] = raw_channel_snip(*float64_net('small_cnn', (8, 8, 1), widths=(4, 6)), scores_lib.KERNEL)
  for name in raw[1e-5]:
    assert np.abs(raw[1e-3][name]).sum() / np.abs(raw[1e-5][name]).sum() > 50  # ~100: the leak through eps


def gate_after_every_batchnorm(model, variables, batches):
  """``dL/dg`` at ``g = 1`` for a gate ``g`` multiplying every BatchNorm's output, written without the plan."""
  x, y = batches[0][0], batches[1][0]
  shapes = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, nn.BatchNorm) and context.method_name == '__call__':
      shapes[context.module.path] = out.shape[-1]
    return out

  with nn.intercept_methods(record):
    model.apply(variables, x, train=True, mutable=['batch_stats'])

  def loss(gates):
    def gated(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      is_norm = isinstance(context.module, nn.BatchNorm) and context.method_name == '__call__'
      return out * gates[context.module.path] if is_norm else out
    with nn.intercept_methods(gated):
      logits, _ = model.apply(variables, x, train=True, mutable=['batch_stats'])
    return losses.softmax_cross_entropy(logits, y)

  return jax.grad(loss)({path: jnp.ones(size, jnp.float64) for path, size in shapes.items()})


@pytest.mark.parametrize('name, shape, kwargs', [('vgg11', (16, 16, 3), {'width': 1 / 16}),
                                                 ('resnet20', (8, 8, 1), {'width': 1})])
@pytest.mark.slow
def test_structured_snip_equals_a_hand_written_gate_after_each_normalisation(name, shape, kwargs):
  model, variables, plan, batches = float64_net(name, shape, **kwargs)
  gates = gate_after_every_batchnorm(model, variables, batches)
  expected = {group.name: sum(np.asarray(gates[slot.module])[list(slot.channels)] for slot in group.norms)
              for group in plan.groups}  # tied channels: one gate shared by every writer's normalisation
  total = sum(np.abs(g).sum() for g in expected.values())
  scores = channel_scores.score_channels(registry.get_criterion('snip'), plan, variables['params'], batches,
                                         loss_fn=prospr_jax.flax_loss_fn(model, variables))
  for group in plan.groups:
    np.testing.assert_allclose(scores[group.name], np.abs(expected[group.name]) / total, rtol=1e-10, atol=1e-15)


@pytest.mark.slow
def test_networks_without_normalisation_score_their_writers_kernels_as_before():
  model, variables, plan, batches = float64_net('lenet5', (28, 28, 1))
  loss_fn = prospr_jax.flax_loss_fn(model, variables)
  score = functools.partial(channel_scores.score_channels, registry.get_criterion('snip'), plan,
                            variables['params'], batches, loss_fn=loss_fn)
  jax.tree.map(np.testing.assert_array_equal, score(), score(gate=scores_lib.KERNEL))


def test_prospr_keeps_its_mask_on_the_kernels_and_the_baselines_gate_the_output():
  gates = {name: criterion.channel_gate for name, criterion in registry.CRITERIA.items()}
  assert {name for name, gate in gates.items() if gate == scores_lib.KERNEL} == {
      'prospr', 'magnitude', 'random', 'synflow'}
  assert scores_lib.gate_of(prospr_jax.prospr_meta_gradient) == scores_lib.gate_of(
      prospr_jax.prospr_saliency_streamed) == scores_lib.KERNEL


def test_structured_prospr_with_no_inner_steps_on_batchnorm_is_refused_naming_structured_snip():
  model, variables, plan, batches = float64_net('small_cnn', (8, 8, 1), widths=(4, 6))
  loss_fn = prospr_jax.flax_loss_fn(model, variables)
  with pytest.raises(ValueError, match=r'M = 0.*epsilon.*structured SNIP \(criterion=snip\)'):
    channel_scores.score_channels(registry.get_criterion('prospr'), plan, variables['params'], batches,
                                  loss_fn=loss_fn)
  two = jax.tree.map(lambda x: jnp.concatenate([x, x]), batches)  # M = 1: a real signal
  scores = channel_scores.score_channels(registry.get_criterion('prospr'), plan, variables['params'], two,
                                         loss_fn=loss_fn)
  assert all(np.isfinite(s).all() for s in scores.values())
