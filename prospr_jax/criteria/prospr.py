"""ProsPr: saliency from meta-gradients through the first M training steps (Alizadeh et al. 2022).

``w0 = c * w_init`` (eq. 3); M inner optimizer steps, step k on ``batches[k]``
(eqs. 4-5); the meta-gradient ``g = dL(w_M, batches[M]) / dc`` (eq. 6); scores
``|g| / sum |g|`` (eq. 11). Every parameter, biases and normalisation
parameters included, takes the inner steps; only prunable kernels carry ``c``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import optax
from chex import ArrayTree

from prospr_jax import masks as masks_lib
from prospr_jax.criteria import model_inputs, scores as scores_lib

log = logging.getLogger(__name__)
LossFn = scores_lib.LossFn

_DIVERGED = 'The ProsPr inner loop diverged: try a smaller inner_lr (it was {lr}) or fewer steps.'
_BAD_DATA = ('The loss is already NaN or Inf at the initial weights on batches[0], before any inner step: check the '
             'inputs (NaN, Inf) and the labels (integers in [0, classes)), not inner_lr.')


@functools.lru_cache(maxsize=64)  # one object per setting, so the jitted meta-gradient compiles once
def default_inner_optimizer(inner_lr: float = 0.1, inner_momentum: float = 0.0) -> optax.GradientTransformation:
  """SGD without weight decay; optax's trace matches torch's momentum buffer (first buffer = gradient)."""
  return optax.sgd(inner_lr, momentum=inner_momentum or None)


def _inner_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, first_order: bool):
  """One differentiable training step ``(w, opt_state), batch -> (w', opt_state'), loss``."""
  def step(carry, batch):
    params, opt_state = carry
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    if first_order:
      grads = jax.lax.stop_gradient(grads)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss
  return step


@functools.partial(jax.jit, static_argnames=('loss_fn', 'optimizer', 'first_order', 'checkpoint_steps'))
def _meta_gradient(params, batches, mask, *, loss_fn, optimizer, first_order, checkpoint_steps):
  inner_batches = jax.tree.map(lambda x: x[:-1], batches)
  meta_batch = scores_lib.batch_at(batches, -1)
  step = _inner_step(loss_fn, optimizer, first_order)
  if checkpoint_steps:
    step = jax.checkpoint(step)

  def meta_loss(c):
    w0 = masks_lib.apply_mask(params, c)
    (w_final, _), _ = jax.lax.scan(step, (w0, optimizer.init(w0)), inner_batches)
    return loss_fn(w_final, meta_batch)

  return jax.grad(meta_loss)(mask)


@functools.partial(jax.jit, static_argnames=('loss_fn', 'optimizer'))
def _first_order_meta_gradient(params, batches, mask, *, loss_fn, optimizer):
  """First order when ``dw_M/dw_0 = I``: ``grad_w L(w_M, D_M) * w_init`` (eq. 17) in one scan over all M + 1 batches.

  Step k carries ``grad L(w_k, D_k)``, so the last step's gradient is the meta-loss's (its update is dropped). One
  loop body holds every temporary: a final gradient outside the loop would get its own (benchmarks/README.md,
  memory).
  """
  def step(carry, batch):
    weights, opt_state, _ = carry
    grads = jax.grad(loss_fn)(weights, batch)
    updates, opt_state = optimizer.update(grads, opt_state, weights)
    return (optax.apply_updates(weights, updates), opt_state, grads), None

  start = (params, optimizer.init(params), jax.tree.map(jnp.zeros_like, params))
  (_, _, grads), _ = jax.lax.scan(step, start, batches)
  return _mask_vjp(params, mask, grads)


@scores_lib.channel_gate(scores_lib.KERNEL)
@model_inputs.accepts_models()
def prospr_meta_gradient(
    params: ArrayTree,
    batches: ArrayTree,
    *,
    loss_fn: LossFn,
    inner_lr: float = 0.1,
    inner_momentum: float = 0.0,
    inner_optimizer: optax.GradientTransformation | None = None,
    first_order: bool = False,
    structured: bool = False,
    prunable: masks_lib.Prunable | None = None,
    checkpoint_steps: bool = True,
) -> ArrayTree:
  """The signed meta-gradient ``dL(w_M, D_M) / dc`` at ``c = 1`` (paper eqs. 6-10).

  Exact mode differentiates through a ``lax.scan`` of the M inner steps (its
  body under ``jax.checkpoint`` unless ``checkpoint_steps=False``), so memory
  grows by about one parameter copy per step and compile time not at all.
  ``first_order`` stops the gradient through the inner gradients, giving
  ``grad_w L(w_M) * w_init`` for optimizers whose update ignores the params
  (eq. 17). With momentum this is the true derivative; the authors' code drops
  the step-0 second-order term by detaching the first momentum buffer. Where
  the update ignores the params, first order runs as plain training steps
  (``_first_order_meta_gradient``), not as a differentiated loop.
  """
  mask = scores_lib.data_mask_variables(params, batches, loss_fn=loss_fn, structured=structured,
                                        prunable=prunable)
  optimizer = inner_optimizer or default_inner_optimizer(inner_lr, inner_momentum)
  if first_order and not _updates_use_params(optimizer, params):
    return _first_order_meta_gradient(params, batches, mask, loss_fn=loss_fn, optimizer=optimizer)
  return _meta_gradient(params, batches, mask, loss_fn=loss_fn, optimizer=optimizer,
                        first_order=first_order, checkpoint_steps=checkpoint_steps)


@scores_lib.channel_gate(scores_lib.KERNEL)
@model_inputs.accepts_models()
def prospr_saliency(
    params: ArrayTree,
    batches: ArrayTree,
    *,
    loss_fn: LossFn,
    inner_lr: float = 0.1,
    inner_momentum: float = 0.0,
    inner_optimizer: optax.GradientTransformation | None = None,
    first_order: bool = False,
    structured: bool = False,
    prunable: masks_lib.Prunable | None = None,
    checkpoint_steps: bool = True,
) -> ArrayTree:
  """ProsPr scores ``|g| / sum |g|`` with ``g`` the meta-gradient (paper eq. 11); mirrors ``params``.

  ``batches`` is a pytree whose leaves have a leading axis of M + 1: step k
  uses ``batches[k]``, the meta-loss ``batches[M]``; M = 0 gives SNIP. Scores
  are ``None`` on unmasked leaves; with ``structured`` they have shape
  ``(C_out,)`` and the output layer is unmasked unless ``prunable`` says
  otherwise. ``prunable(path, leaf)`` defaults to ``leaf.ndim > 1``.
  """
  gradient = prospr_meta_gradient(
      params, batches, loss_fn=loss_fn, inner_lr=inner_lr, inner_momentum=inner_momentum,
      inner_optimizer=inner_optimizer, first_order=first_order, structured=structured, prunable=prunable,
      checkpoint_steps=checkpoint_steps)
  try:
    return scores_lib.normalized_scores(gradient, _DIVERGED.format(lr=inner_lr))
  except ValueError as error:  # the loss may be NaN before any inner step: then the data are to blame
    if not scores_lib.is_concrete(batches) or bool(jnp.isfinite(loss_fn(params, scores_lib.batch_at(batches, 0)))):
      raise
    raise ValueError(str(error).replace(_DIVERGED.format(lr=inner_lr), _BAD_DATA)) from None


def _updates_use_params(optimizer: optax.GradientTransformation, params: ArrayTree) -> bool:
  """Whether ``optimizer.update`` reads the params (e.g. weight decay), making ``dw_M/dw_0 != I``."""
  def updates(p):
    grads = jax.tree.map(jnp.zeros_like, p)
    return optimizer.update(grads, optimizer.init(p), p)[0]
  jaxpr = jax.make_jaxpr(updates)(params).jaxpr
  used = {v for eqn in jaxpr.eqns for v in eqn.invars if not isinstance(v, jex.Literal)}
  used |= {v for v in jaxpr.outvars if not isinstance(v, jex.Literal)}
  # optimizer.init(p) reads only shapes, so any use of an input is a use by update.
  return any(v in used for v in jaxpr.invars)


@functools.partial(jax.jit, static_argnames=('loss_fn', 'optimizer'), donate_argnums=(0, 1))
def _train_step(params, opt_state, batch, *, loss_fn, optimizer):
  (params, opt_state), loss = _inner_step(loss_fn, optimizer, first_order=True)((params, opt_state), batch)
  return params, opt_state, loss


@scores_lib.channel_gate(scores_lib.KERNEL)
@model_inputs.accepts_models()
def prospr_saliency_streamed(
    params: ArrayTree,
    batches: Iterable[ArrayTree],
    *,
    loss_fn: LossFn,
    num_steps: int | None = None,
    inner_lr: float = 0.1,
    inner_momentum: float = 0.0,
    inner_optimizer: optax.GradientTransformation | None = None,
    structured: bool = False,
    prunable: masks_lib.Prunable | None = None,
    log_every: int = 100,
) -> ArrayTree:
  """First-order ProsPr over an iterator of batches, one batch in memory at a time (paper eq. 17).

  Trains ``num_steps`` jitted steps on the first batches, then scores
  ``grad_w L(w_M) * w_init`` on the next one; without ``num_steps`` it reads
  the iterator to its end and the last batch is the meta-batch. Memory does not
  grow with M (ImageNet uses M = 1024). Equals ``prospr_saliency(...,
  first_order=True)`` on the stacked batches.
  """
  optimizer = inner_optimizer or default_inner_optimizer(inner_lr, inner_momentum)
  if _updates_use_params(optimizer, params):
    raise ValueError('inner_optimizer reads the parameters in its update (weight decay?), so dw_M/dw_0 is not '
                     'the identity and the streamed first-order score would be wrong. Use '
                     'prospr_saliency(first_order=True) on stacked batches, or drop the decay from the inner loop.')
  if num_steps is not None and num_steps < 0:
    raise ValueError(f'num_steps must be >= 0, got {num_steps}')
  iterator = iter(batches)
  current = next(iterator, None)
  if current is None:
    raise ValueError('batches yielded nothing: pass an iterator of M + 1 batches')
  scores_lib.check_loss_fn(loss_fn, params, current)
  mask = scores_lib.mask_variables(params, current, loss_fn=loss_fn, structured=structured, prunable=prunable)

  weights = jax.tree.map(jnp.array, params)  # a copy: the steps donate their buffers
  opt_state = optimizer.init(weights)
  step = 0
  while num_steps is None or step < num_steps:
    upcoming = next(iterator, None)  # look ahead: without num_steps the last batch is the meta-batch
    if upcoming is None:
      if num_steps is not None:
        raise ValueError(f'batches ran out after {step + 1} batches; num_steps={num_steps} needs {num_steps + 1}')
      break
    weights, opt_state, loss = _train_step(weights, opt_state, current, loss_fn=loss_fn, optimizer=optimizer)
    step += 1
    if log_every and step % log_every == 0:
      log.info('ProsPr first-order step %d%s: loss %.4f', step, f'/{num_steps}' if num_steps else '', loss)
    current = upcoming
  gradient = _first_order_gradient(params, weights, current, mask, loss_fn=loss_fn)
  return scores_lib.normalized_scores(gradient, _DIVERGED.format(lr=inner_lr))


@functools.partial(jax.jit, static_argnames=('loss_fn',))
def _first_order_gradient(params_init, params_final, meta_batch, mask, *, loss_fn):
  """``dL(w_M)/dc`` when ``dw_M/dw_0 = I``: the VJP of ``c -> c * w_init`` with ``grad_w L(w_M)``."""
  return _mask_vjp(params_init, mask, jax.grad(loss_fn)(params_final, meta_batch))


def _mask_vjp(params_init, mask, grads):
  """``grads`` pulled back through ``c -> c * w_init``: per weight ``g * w_init``, per channel its sum."""
  _, vjp = jax.vjp(lambda c: masks_lib.apply_mask(params_init, c), mask)
  return vjp(grads)[0]
