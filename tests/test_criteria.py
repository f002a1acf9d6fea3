"""The simple criteria share ProsPr's signature and registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nets import load_oracle, mlp_problem, oracle_batches, oracle_loss, oracle_params

import prospr_jax


def test_snip_equals_the_authors_snip_scores():
  ref = load_oracle('snip_m0')
  scores = prospr_jax.snip_saliency(oracle_params(ref), oracle_batches(ref), loss_fn=oracle_loss)
  for layer in ('conv1', 'conv2', 'dense'):
    np.testing.assert_allclose(scores[layer]['kernel'], ref[f'score_normalized_{layer}_kernel'], rtol=1e-9)


@pytest.mark.slow
def test_snip_over_several_batches_scores_the_mean_loss():
  params, batches, loss_fn = mlp_problem()
  scores = prospr_jax.snip_saliency(params, batches, loss_fn=loss_fn)
  ones = prospr_jax.ones_mask(params)
  mean_loss = lambda c: sum(loss_fn(prospr_jax.apply_mask(params, c), (batches[0][k], batches[1][k]))
                            for k in range(4)) / 4
  grads = jax.grad(mean_loss)(ones)
  total = sum(jnp.abs(g).sum() for g in jax.tree.leaves(grads))
  jax.tree.map(lambda s, g: np.testing.assert_allclose(s, jnp.abs(g) / total, rtol=1e-10), scores, grads)


def test_magnitude_scores_are_normalised_absolute_weights():
  params = {'w': jnp.array([[1.0, -3.0], [0.0, 4.0]]), 'b': jnp.ones(2)}
  scores = prospr_jax.magnitude_saliency(params)
  np.testing.assert_allclose(scores['w'], [[0.125, 0.375], [0.0, 0.5]])
  assert scores['b'] is None


def test_structured_magnitude_is_the_l1_norm_of_each_output_channel():
  params = {'conv': jnp.array([[1.0, -2.0], [3.0, 0.0]]), 'head': jnp.ones((2, 2))}
  scores = prospr_jax.magnitude_saliency(params, structured=True, prunable=lambda path, leaf: path == ('conv',))
  np.testing.assert_allclose(scores['conv'], [4 / 6, 2 / 6])


def test_random_scores_are_reproducible_from_the_seed_and_differ_across_seeds():
  params, _, _ = mlp_problem()
  a, b, c = (prospr_jax.random_saliency(params, rng=seed) for seed in (0, 0, 1))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert not np.array_equal(a['Dense_0']['kernel'], c['Dense_0']['kernel'])
  assert sum(float(x.sum()) for x in jax.tree.leaves(a)) == pytest.approx(1.0)


@pytest.mark.parametrize('name', sorted(prospr_jax.CRITERIA))
def test_every_registered_criterion_takes_the_common_signature(name):
  from nets import MLP
  params, batches, loss_fn = mlp_problem()
  extra = {'sparsity': 0.5, 'rounds': 3} if name in prospr_jax.ITERATIVE else {}
  if name == 'synflow':
    extra['apply_fn'] = lambda p, x: MLP().apply({'params': p}, x)
  if prospr_jax.get_criterion(name).channel_costs:  # alone it cannot see which layers read a channel
    snip = prospr_jax.snip_saliency(params, batches, loss_fn=loss_fn, structured=True)
    extra['channel_costs'] = jax.tree.map(jnp.ones_like, snip)
  scores = prospr_jax.get_criterion(name)(params, batches, loss_fn=loss_fn, structured=True, **extra)
  assert scores['Dense_2']['kernel'] is None  # the classifier
  assert scores['Dense_0']['kernel'].shape == (12,) and scores['Dense_0']['bias'] is None
  masks = prospr_jax.global_topk_mask(scores, 0.5)
  assert sum(int(m.sum()) for m in jax.tree.leaves(masks)) == 12


def test_structured_only_criteria_are_not_among_the_unstructured_names_and_configs_refuse_them_unstructured():
  from configs import default
  from prospr_jax.criteria import registry
  from prospr_jax.harness import validation
  structured_only = {name for name, criterion in registry.CRITERIA.items() if criterion.structured_only}
  assert structured_only == {'three_sp', 'three_sp_reinit', 'three_sp_rescale'}
  assert registry.UNSTRUCTURED == tuple(name for name in registry.CRITERIA if name not in structured_only)
  config = default.get_config()
  config.criterion = 'three_sp_rescale'
  with pytest.raises(validation.ConfigError,
                     match="three_sp_rescale' prunes channels.*prune.structured=True, or choose one of prospr, snip"):
    validation.validate_config(config)
  config.prune.structured = True
  validation.validate_config(config)
