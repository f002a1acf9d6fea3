"""SynFlow: iterative synaptic flow pruning, data-free (Tanaka et al. 2020).

``R = 1^T f(1; |theta| * c)``: the network with absolute parameters applied to
an all-ones input of one example's shape; the score of a weight is
``|theta * dR/dtheta|``, rescored under the current mask for ``rounds`` rounds
on the exponential schedule. BatchNorm follows the authors' code, which prunes
in eval mode: running statistics, made absolute with the rest (``apply_fn``'s job).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from chex import ArrayTree

from prospr_jax import masks as masks_lib, topk
from prospr_jax.criteria import iterative, model_inputs, scores as scores_lib

ApplyFn = Callable[[ArrayTree, jax.Array], jax.Array]


def _ones_input(batches: ArrayTree | None, input_shape: tuple[int, ...] | None, dtype) -> jax.Array:
  if input_shape is None:
    if batches is None:
      raise ValueError('synflow needs input_shape, or batches to read one example\'s shape from')
    first = jax.tree.leaves(batches)[0]  # (x, y) or {'image', 'label'}: the inputs come first
    input_shape = tuple(first.shape[2:])
  return jnp.ones((1, *input_shape), dtype)


@functools.partial(jax.jit, static_argnames=('apply_fn',))
def synaptic_flow(params: ArrayTree, mask: ArrayTree, ones: jax.Array, *, apply_fn) -> ArrayTree:
  """``dR/dc`` at ``c = mask``: ``|theta| * dR/dw`` per entry (summed per channel)."""
  absolute = jax.tree.map(jnp.abs, params)
  flow = lambda c: jnp.sum(apply_fn(masks_lib.apply_mask(absolute, c), ones))
  return jax.tree.map(jnp.abs, jax.grad(flow)(mask))


@scores_lib.channel_gate(scores_lib.KERNEL)
@model_inputs.accepts_models(needs='apply_fn')
def synflow_saliency(
    params: ArrayTree,
    batches: ArrayTree | None = None,
    *,
    apply_fn: ApplyFn,
    sparsity: float,
    rounds: int = 100,
    mask_fn: iterative.MaskFn = topk.global_topk_mask,
    invert: bool = False,
    input_shape: tuple[int, ...] | None = None,
    structured: bool = False,
    prunable: masks_lib.Prunable | None = None,
    loss_fn: scores_lib.LossFn | None = None,
) -> ArrayTree:
  """SynFlow scores after ``rounds`` rounds to ``sparsity``; ``apply_fn(params, x) -> outputs`` (eval mode).

  Only the shape of ``batches`` is used (data-free). ``loss_fn`` is accepted
  for a uniform signature and ignored.
  """
  del loss_fn
  ones = _ones_input(batches, input_shape, jnp.result_type(jax.tree.leaves(params)[0]))
  flow_loss = lambda p, x: jnp.sum(apply_fn(p, x))
  mask = scores_lib.mask_variables(params, ones, loss_fn=flow_loss, structured=structured, prunable=prunable)
  return iterative.prune_iteratively(
      lambda c: synaptic_flow(params, c, ones, apply_fn=apply_fn), mask, sparsity=sparsity, rounds=rounds,
      mask_fn=mask_fn, monotone=True, invert=invert)
