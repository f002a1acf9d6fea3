"""Layer-wise budgets: global, uniform, ERK with the dense fallback; every one keeps the exact count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prospr_jax import distributions


def scores_tree(seed=0):
  rng = np.random.default_rng(seed)
  return {'small': jnp.asarray(rng.random((2, 2))), 'big': jnp.asarray(rng.random((10, 10))),
          'conv': jnp.asarray(rng.random((3, 3, 4, 8)))}


def test_erk_densities_match_a_hand_computation_with_the_dense_fallback():
  # raw = sum(shape) / prod(shape): 4/4 = 1 and 20/100 = 0.2. At density 0.5 (52 of 104): eps = 52 / 24 makes the
  # small layer 2.17 > 1, so it goes dense and eps = (52 - 4) / 20 = 2.4 gives the big layer 0.48.
  assert distributions.erk_densities([(2, 2), (10, 10)], 0.5) == pytest.approx([1.0, 0.48])


def test_erk_without_fallback_is_proportional_to_the_raw_density():
  # (10, 10): 0.2, (20, 5): 0.25; at density 0.1 eps = 20 / (20 + 25) so 0.0889 and 0.1111.
  assert distributions.erk_densities([(10, 10), (20, 5)], 0.1) == pytest.approx([0.2 * 20 / 45, 0.25 * 20 / 45])


@pytest.mark.parametrize('density', [0.01, 0.1, 0.5, 0.9])
def test_erk_densities_never_exceed_one_and_keep_the_budget(density):
  shapes = [(3, 3, 3, 16), (3, 3, 16, 32), (1, 1, 32, 64), (64, 10), (2, 2)]
  densities = distributions.erk_densities(shapes, density)
  sizes = [np.prod(s) for s in shapes]
  assert max(densities) <= 1.0
  assert sum(d * n for d, n in zip(densities, sizes)) == pytest.approx(density * sum(sizes))


@pytest.mark.parametrize('distribution', sorted(distributions.DISTRIBUTIONS))
@pytest.mark.parametrize('sparsity', [0.3, 0.9, 0.97])
def test_every_distribution_keeps_exactly_ceil_n_times_density(distribution, sparsity):
  masks = distributions.make_mask(scores_tree(), sparsity, distribution, keep_one_per_layer=True)
  assert sum(int(m.sum()) for m in jax.tree.leaves(masks)) == int(np.ceil(392 * (1 - sparsity) - 1e-9))


def test_uniform_keeps_the_same_fraction_of_every_layer():
  masks = distributions.make_mask(scores_tree(), 0.5, 'uniform')
  assert [int(masks[k].sum()) for k in ('small', 'big', 'conv')] == [2, 50, 144]


def test_erk_gives_small_layers_more_density_than_big_ones():
  masks = distributions.make_mask(scores_tree(), 0.9, 'erk')
  density = {k: float(m.mean()) for k, m in masks.items()}
  assert density['small'] > density['big'] > density['conv']
