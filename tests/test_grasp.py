"""GraSP: golden values, H g against finite differences, the authors' sign convention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nets import bn_cnn_problem, mlp_problem

import prospr_jax
from prospr_jax.criteria.grasp import hessian_gradient_product


def quadratic_loss(params, x):
  """L = mean((x W)^2) / 2 with W of shape (2, 1): g = u x, H = x x^T, so H g = u |x|^2 x."""
  return 0.5 * jnp.mean((x @ params['w']) ** 2)


def test_golden_values_on_a_two_weight_quadratic():
  params = {'w': jnp.array([[3.0], [1.0]])}
  x = jnp.array([[[1.0, 2.0]]])  # one batch of one example: u = 3 + 2 = 5, |x|^2 = 5
  g, hg = hessian_gradient_product(params, x, {'w': jnp.ones((2, 1))}, loss_fn=quadratic_loss)
  np.testing.assert_allclose(g['w'].ravel(), [5.0, 10.0])
  np.testing.assert_allclose(hg['w'].ravel(), [25.0, 50.0])
  scores = prospr_jax.grasp_saliency(params, x, loss_fn=quadratic_loss)
  np.testing.assert_allclose(scores['w'].ravel(), [75 / 125, 50 / 125])  # theta * Hg / |sum|


def test_we_keep_the_highest_theta_hg_which_the_authors_express_as_removing_the_highest_s():
  # The authors score S = -theta * Hg and keep S <= threshold: with S = (-75, -50, +20) they remove +20 first.
  params = {'w': jnp.array([[3.0], [1.0], [-1.0]])}
  x = jnp.array([[[1.0, 2.0, 0.0]]])
  scores = prospr_jax.grasp_saliency(params, x, loss_fn=quadratic_loss)
  s_authors = -np.asarray(scores['w']).ravel()
  masks = prospr_jax.global_topk_mask(scores, 1 / 3)  # keep 2 of 3
  assert list(np.asarray(masks['w']).ravel()) == list(s_authors <= np.sort(s_authors)[1])


@pytest.mark.slow
def test_hessian_gradient_product_equals_central_differences_of_the_gradient():
  params, batches, loss_fn = bn_cnn_problem()
  mask = prospr_jax.ones_mask(params)
  g, hg = hessian_gradient_product(params, batches, mask, loss_fn=loss_fn)
  weights = jax.tree.map(lambda m, p: None if m is None else p, mask, params, is_leaf=lambda x: x is None)

  def mean_grad(w):
    full = jax.tree.map(lambda m, p, v: p if m is None else v, mask, params, w, is_leaf=lambda x: x is None)
    grads = [jax.grad(lambda q: loss_fn(q, (batches[0][k], batches[1][k])))(full) for k in range(4)]
    return jax.tree.map(lambda m, *gs: None if m is None else sum(gs) / 4, mask, *grads,
                        is_leaf=lambda x: x is None)

  eps = 1e-5
  plus = mean_grad(jax.tree.map(lambda w, d: w + eps * d, weights, g))
  minus = mean_grad(jax.tree.map(lambda w, d: w - eps * d, weights, g))
  fd = jax.tree.map(lambda a, b: (a - b) / (2 * eps), plus, minus)
  jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-9 * float(jnp.max(jnp.abs(e)))),
               hg, fd)


def test_several_batches_average_g_and_hg_and_channels_sum():
  params, batches, loss_fn = mlp_problem()
  multi = prospr_jax.get_criterion('grasp_mb')(params, batches, loss_fn=loss_fn)
  single = prospr_jax.get_criterion('grasp')(params, batches, loss_fn=loss_fn)
  assert not np.allclose(multi['Dense_0']['kernel'], single['Dense_0']['kernel'])
  # The same prunable weights (the classifier too), so H is the same block: channels sum theta * Hg.
  per_channel = prospr_jax.grasp_saliency(params, batches, loss_fn=loss_fn, structured=True,
                                          prunable=prospr_jax.default_prunable)
  k = multi['Dense_0']['kernel']
  total_ratio = float(jnp.sum(per_channel['Dense_0']['kernel']) / jnp.sum(k))  # normalisers differ
  np.testing.assert_allclose(per_channel['Dense_0']['kernel'], k.sum(axis=0) * total_ratio, rtol=1e-9)


def test_temperature_divides_the_logits():
  from nets import MLP
  params, batches, _ = mlp_problem()
  model = MLP()
  hot = prospr_jax.flax_loss_fn(model, {'params': params}, temperature=200.0)
  x, y = batches[0][0], batches[1][0]
  logits = model.apply({'params': params}, x)
  assert float(hot(params, (x, y))) == pytest.approx(float(prospr_jax.softmax_cross_entropy(logits / 200, y)))
