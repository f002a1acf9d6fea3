"""Bad input is refused with an error that names the problem and the fix."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nets import mlp_problem

import prospr_jax


@pytest.mark.parametrize('sparsity', [-0.1, 1.0, 1.5, float('nan'), '0.5'])
def test_sparsity_outside_zero_one_is_refused(sparsity):
  with pytest.raises(ValueError, match=r'sparsity must be in \[0, 1\)'):
    prospr_jax.global_topk_mask({'w': jnp.ones((2, 2))}, sparsity)


def test_batches_with_mismatched_leading_sizes_are_refused():
  params, (x, y), loss_fn = mlp_problem()
  with pytest.raises(ValueError, match='same leading axis.*M\\+1'):
    prospr_jax.prospr_saliency(params, (x, y[0]), loss_fn=loss_fn)


def test_a_batch_without_the_leading_axis_is_refused():
  params, (x, y), loss_fn = mlp_problem()
  with pytest.raises(ValueError, match='leading axis'):
    prospr_jax.prospr_saliency(params, (x[0], y[0, 0]), loss_fn=loss_fn)


def test_one_batch_passed_instead_of_m_plus_one_stacked_batches_is_refused():
  params, (x, y), loss_fn = mlp_problem()
  with pytest.raises(ValueError, match=r'one batch instead of M\+1 stacked'):
    prospr_jax.prospr_saliency(params, (x[0], y[0]), loss_fn=loss_fn)


def test_a_loss_fn_that_rejects_the_batches_gets_a_note_about_the_leading_axis():
  params, batches, _ = mlp_problem()

  def loss_fn(p, batch):
    raise TypeError('boom')

  with pytest.raises(TypeError) as error:
    prospr_jax.prospr_saliency(params, batches, loss_fn=loss_fn)
  assert any('leading axis' in note for note in error.value.__notes__)


def test_a_loss_that_is_not_a_scalar_is_refused():
  params, batches, _ = mlp_problem()
  with pytest.raises(ValueError, match='must return a scalar'):
    prospr_jax.prospr_saliency(params, batches, loss_fn=lambda p, b: b[0] @ p['Dense_0']['kernel'])


def test_a_prunable_that_selects_nothing_is_refused():
  params, batches, loss_fn = mlp_problem()
  with pytest.raises(ValueError, match='prunable selects no parameter'):
    prospr_jax.prospr_saliency(params, batches, loss_fn=loss_fn, prunable=lambda path, leaf: False)


def test_scores_and_params_of_different_structure_are_refused():
  params = {'a': jnp.ones((2, 2)), 'b': jnp.ones((2, 2))}
  with pytest.raises(ValueError, match='different structures'):
    prospr_jax.apply_mask(params, {'a': jnp.ones((2, 2))})
  with pytest.raises(ValueError, match='does not fit'):
    prospr_jax.apply_mask(params, {'a': jnp.ones((3,)), 'b': None})


@pytest.mark.parametrize('bad', [np.nan, np.inf])
def test_nan_or_inf_scores_name_the_layer_and_suggest_a_smaller_inner_lr(bad):
  scores = {'conv': {'kernel': jnp.ones((3, 3)).at[0, 0].set(bad)}, 'dense': {'kernel': jnp.ones((2, 2))}}
  with pytest.raises(ValueError, match=r'conv/kernel.*smaller inner_lr'):
    prospr_jax.global_topk_mask(scores, 0.5)


def test_a_diverging_inner_loop_is_reported_with_its_learning_rate():
  params = {'w': jnp.full((4, 4), 0.5, jnp.float32)}
  batches = jnp.ones((4, 8, 4), jnp.float32)
  loss_fn = lambda p, x: jnp.mean((x @ p['w']) ** 2)
  with pytest.raises(ValueError, match=r'w.*smaller inner_lr \(it was 10000000000.0\)'):
    prospr_jax.prospr_saliency(params, batches, loss_fn=loss_fn, inner_lr=1e10)


def test_streamed_refuses_an_inner_optimizer_that_reads_the_params():
  import optax
  params, batches, loss_fn = mlp_problem()
  decayed = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1))
  stream = iter([jax.tree.map(lambda x: x[k], batches) for k in range(4)])
  with pytest.raises(ValueError, match='reads the parameters'):
    prospr_jax.prospr_saliency_streamed(params, stream, loss_fn=loss_fn, inner_optimizer=decayed)


def test_streamed_refuses_a_stream_shorter_than_num_steps():
  params, batches, loss_fn = mlp_problem()
  stream = iter([jax.tree.map(lambda x: x[k], batches) for k in range(4)])
  with pytest.raises(ValueError, match='ran out after 4 batches; num_steps=5 needs 6'):
    prospr_jax.prospr_saliency_streamed(params, stream, loss_fn=loss_fn, num_steps=5)


def test_unknown_criterion_lists_the_valid_names():
  with pytest.raises(ValueError, match='unknown criterion .obd.; valid names: force, grasp, grasp_mb, '
                                       'iterative_snip, magnitude, prospr, random, snip, snip_mb, synflow'):
    prospr_jax.get_criterion('obd')


def test_unknown_distribution_lists_the_valid_names():
  from prospr_jax import distributions
  with pytest.raises(ValueError, match='unknown distribution .erdos.; valid names: erk, global, uniform'):
    distributions.make_mask({'w': jnp.ones((2, 2))}, 0.5, 'erdos')
