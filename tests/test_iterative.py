"""Iterative SNIP and FORCE: the exponential schedule, monotone or not, exact counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nets import mlp_problem

import prospr_jax
from prospr_jax.criteria.iterative import exponential_schedule


def test_the_exponential_schedule_multiplies_density_by_the_same_factor_each_round():
  schedule = exponential_schedule(0.99, 4)
  densities = 1 - np.array(schedule)
  np.testing.assert_allclose(densities, [0.01 ** 0.25, 0.01 ** 0.5, 0.01 ** 0.75, 0.01])
  assert schedule[-1] == 0.99


def recorded_rounds(criterion, rounds=8, sparsity=0.95):
  params, batches, loss_fn = mlp_problem()
  masks = []

  def recording_mask_fn(scores, s):
    masks.append(prospr_jax.global_topk_mask(scores, s))
    return masks[-1]

  scores = criterion(params, batches, loss_fn=loss_fn, sparsity=sparsity, rounds=rounds, mask_fn=recording_mask_fn)
  return scores, masks


def revived(earlier, later):
  return sum(int(jnp.sum(l & ~e)) for e, l in zip(jax.tree.leaves(earlier), jax.tree.leaves(later)))


def test_iterative_snip_never_revives_a_pruned_weight():
  _, masks = recorded_rounds(prospr_jax.iterative_snip_saliency)
  assert all(revived(e, l) == 0 for e, l in zip(masks, masks[1:]))


def test_force_lets_pruned_weights_compete_again():
  _, masks = recorded_rounds(prospr_jax.force_saliency, rounds=20, sparsity=0.98)
  assert sum(revived(e, l) for e, l in zip(masks, masks[1:])) > 0


@pytest.mark.parametrize('criterion', [prospr_jax.iterative_snip_saliency, prospr_jax.force_saliency])
def test_the_returned_scores_reproduce_the_last_rounds_mask_with_the_exact_count(criterion):
  scores, masks = recorded_rounds(criterion)
  final = prospr_jax.global_topk_mask(scores, 0.95)
  jax.tree.map(np.testing.assert_array_equal, final, masks[-1])
  total = sum(m.size for m in jax.tree.leaves(final))
  assert sum(int(m.sum()) for m in jax.tree.leaves(final)) == int(np.ceil(total * 0.05 - 1e-9))


def test_one_round_of_iterative_snip_is_snip():
  params, batches, loss_fn = mlp_problem()
  one_round = prospr_jax.iterative_snip_saliency(params, batches, loss_fn=loss_fn, sparsity=0.7, rounds=1)
  snip = prospr_jax.get_criterion('snip_mb')(params, batches, loss_fn=loss_fn)
  jax.tree.map(np.testing.assert_array_equal, prospr_jax.global_topk_mask(one_round, 0.7),
               prospr_jax.global_topk_mask(snip, 0.7))


@pytest.mark.parametrize('criterion', [prospr_jax.iterative_snip_saliency, prospr_jax.force_saliency])
def test_round_r_scores_the_batches_of_round_batches_r(criterion):
  """As the authors' code draws them: round 0 scores ``batches``, round r >= 1 ``round_batches(r)``."""
  params, batches, loss_fn = mlp_problem()
  other = jax.tree.map(lambda x: x[::-1] * (1.5 if x.dtype.kind == 'f' else 1), batches)
  asked = []

  def round_batches(r):
    asked.append(r)
    return other

  fresh = criterion(params, batches, loss_fn=loss_fn, sparsity=0.9, rounds=4, round_batches=round_batches)
  same = criterion(params, batches, loss_fn=loss_fn, sparsity=0.9, rounds=4)
  assert asked == [1, 2, 3]
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(fresh), jax.tree.leaves(same)))
