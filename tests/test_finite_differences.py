"""Exact ProsPr is the true derivative: central finite differences on the mask, float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nets import bn_cnn_problem, mlp_problem, unrolled_meta_loss

import prospr_jax

EPS = 1e-6
ENTRIES_PER_LAYER = 4


def finite_difference(f, masks, leaf_index, flat_index):
  leaves, treedef = jax.tree.flatten(masks)

  def shifted(delta):
    bumped = list(leaves)
    bumped[leaf_index] = leaves[leaf_index].reshape(-1).at[flat_index].add(delta).reshape(leaves[leaf_index].shape)
    return f(jax.tree.unflatten(treedef, bumped))

  return (shifted(EPS) - shifted(-EPS)) / (2 * EPS)


@pytest.mark.parametrize('problem', [mlp_problem, pytest.param(bn_cnn_problem, marks=pytest.mark.slow)],
                         ids=['mlp', 'batchnorm_cnn'])
@pytest.mark.parametrize('momentum', [0.0, 0.9])
def test_exact_meta_gradient_matches_central_differences(problem, momentum):
  params, batches, loss_fn = problem()
  grads = prospr_jax.prospr_meta_gradient(params, batches, loss_fn=loss_fn, inner_lr=0.1,
                                          inner_momentum=momentum)
  ones = jax.tree.map(jnp.ones_like, grads)
  meta_loss = jax.jit(lambda c: unrolled_meta_loss(params, batches, loss_fn, c, lr=0.1, momentum=momentum))
  rng = np.random.default_rng(0)
  for leaf_index, g in enumerate(jax.tree.leaves(grads)):
    scale = float(jnp.max(jnp.abs(g)))
    assert scale > 0
    for flat_index in rng.choice(g.size, size=min(ENTRIES_PER_LAYER, g.size), replace=False):
      fd = finite_difference(meta_loss, ones, leaf_index, int(flat_index))
      np.testing.assert_allclose(g.reshape(-1)[flat_index], fd, rtol=0, atol=1e-7 * scale)
