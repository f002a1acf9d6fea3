"""GraSP: keep the weights that preserve gradient flow (Wang et al. 2020).

``S = -theta * (H g)`` with ``g`` the loss gradient and ``H`` the Hessian of the
prunable weights. The authors REMOVE the weights with the highest ``S`` (they
keep ``S <= threshold``), so the score we rank by, higher = keep, is
``theta * H g = -S``. Their code divides the logits by a temperature of 200:
build the loss with ``flax_loss_fn(..., temperature=200)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from chex import ArrayTree

from prospr_jax import masks as masks_lib, topk
from prospr_jax.criteria import model_inputs, scores as scores_lib


def _split(params: ArrayTree, mask: ArrayTree) -> tuple[ArrayTree, ArrayTree]:
  weights = jax.tree.map(lambda m, p: None if m is None else p, mask, params, is_leaf=masks_lib.is_none)
  return weights, mask


def _merge(params: ArrayTree, mask: ArrayTree, weights: ArrayTree) -> ArrayTree:
  return jax.tree.map(lambda m, p, w: p if m is None else w, mask, params, weights, is_leaf=masks_lib.is_none)


@functools.partial(jax.jit, static_argnames=('loss_fn',))
def hessian_gradient_product(params: ArrayTree, batches: ArrayTree, mask: ArrayTree, *, loss_fn) -> tuple[ArrayTree, ArrayTree]:
  """``(g, H g)`` over the masked (prunable) weights, averaged over the batches; never a full Hessian.

  ``H g = grad_w <grad_w L(w), stop_gradient(g)>`` (reverse over reverse): unlike
  ``jax.jvp`` of ``jax.grad`` it also runs through the custom-VJP convolutions
  that make second-order passes fast on CPU (``xla_cpu/conv.py``).
  """
  weights, _ = _split(params, mask)
  batch_loss = lambda w, batch: loss_fn(_merge(params, mask, w), batch)
  mean = lambda trees: jax.tree.map(lambda x: jnp.mean(x, axis=0), trees)
  g = mean(jax.vmap(lambda batch: jax.grad(batch_loss)(weights, batch))(batches))
  def hvp(batch):
    directional = lambda w: sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(jax.grad(batch_loss)(w, batch)),
                                                                  jax.tree.leaves(g)))
    return jax.grad(directional)(weights)
  return g, mean(jax.vmap(hvp)(batches))


@model_inputs.accepts_models()
def grasp_saliency(
    params: ArrayTree,
    batches: ArrayTree,
    *,
    loss_fn: scores_lib.LossFn,
    structured: bool = False,
    prunable: masks_lib.Prunable | None = None,
) -> ArrayTree:
  """GraSP scores ``theta * H g / |sum(theta * H g)|``, signed; keep the highest (= remove the highest ``S``).

  Several batches along the leading axis average ``g`` and ``H g`` (GraSP-MB).
  Per channel, the sum over the channel (the mask-variable chain rule).
  """
  mask = scores_lib.data_mask_variables(params, batches, loss_fn=loss_fn, structured=structured,
                                        prunable=prunable)
  _, hg = hessian_gradient_product(params, batches, mask, loss_fn=loss_fn)
  cotangent = _merge(jax.tree.map(jnp.zeros_like, params), mask, hg)
  _, vjp = jax.vjp(lambda c: masks_lib.apply_mask(params, c), mask)  # theta * Hg, summed per channel
  theta_hg = vjp(cotangent)[0]
  if scores_lib.is_concrete(theta_hg):
    topk.check_finite_scores(theta_hg)
  total = jnp.abs(sum(jnp.sum(s) for s in jax.tree.leaves(theta_hg)))
  return jax.tree.map(lambda s: s / total, theta_hg)
