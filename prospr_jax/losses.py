"""Losses, and the one-liner that turns a Flax module into a criterion's ``loss_fn(params, batch)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from chex import ArrayTree


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy with integer labels (torch's ``F.cross_entropy``); NaN, and NaN gradients, if a label
  is outside ``[0, classes)``, never the loss of a wrapped-around class."""
  valid = (labels >= 0) & (labels < logits.shape[-1])
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
  return (losses * jnp.where(valid, 1.0, jnp.nan).astype(losses.dtype)).mean()


def split_batch(batch: Any) -> tuple[Any, Any]:
  """``(inputs, labels)`` from a ``(x, y)`` pair or a ``{'image': x, 'label': y}`` dict."""
  if isinstance(batch, Mapping):
    try:
      inputs, labels = batch['image'], batch['label']
    except KeyError:
      raise ValueError(f"a dict batch needs keys 'image' and 'label', got {sorted(batch)}") from None
  elif isinstance(batch, (tuple, list)) and len(batch) == 2:
    inputs, labels = batch
  else:
    raise ValueError(f"a batch is an (inputs, labels) pair or a dict with 'image' and 'label', got {type(batch)}")
  if getattr(inputs, 'dtype', None) == jnp.uint8:
    raise ValueError('the inputs are uint8 (raw pixels?): convert them to floats and normalise them first, e.g. '
                     '(x / 255 - mean) / std')
  return inputs, labels


def flax_loss_fn(
    module: Any,
    variables: Mapping[str, ArrayTree],
    *,
    loss: Callable[[jax.Array, jax.Array], jax.Array] = softmax_cross_entropy,
    temperature: float = 1.0,
    **apply_kwargs: Any,
) -> Callable[[ArrayTree, Any], jax.Array]:
  """``loss_fn(params, batch)`` for a ``flax.linen`` module, e.g. ``flax_loss_fn(model, variables)``.

  ``params`` replaces ``variables['params']``; other collections (BatchNorm's
  ``batch_stats``) are held fixed. A module whose ``__call__`` takes ``train``
  runs with ``train=True``, so BatchNorm uses batch statistics as in
  training, and the running statistics it updates are thrown away.
  """
  state = {name: value for name, value in variables.items() if name != 'params'}
  if 'train' in inspect.signature(module.__call__).parameters:
    apply_kwargs.setdefault('train', True)
  mutable = list(state) if apply_kwargs.get('train', False) and state else False  # no state: plain outputs

  def loss_fn(params: ArrayTree, batch: Any) -> jax.Array:
    inputs, labels = split_batch(batch)
    out = module.apply({'params': params, **state}, inputs, mutable=mutable, **apply_kwargs)
    logits = out[0] if mutable else out
    return loss(logits / temperature, labels)

  return loss_fn


def flax_apply_fn(module: Any, variables: Mapping[str, ArrayTree], *,
                  absolute_state: bool = False) -> Callable[[ArrayTree, jax.Array], jax.Array]:
  """``apply_fn(params, inputs) -> outputs`` in eval mode (running BatchNorm statistics), for SynFlow.

  ``absolute_state`` makes the non-parameter collections absolute, as the
  SynFlow authors' code does to the whole state dict before scoring.
  """
  state = {name: value for name, value in variables.items() if name != 'params'}
  if absolute_state:
    state = jax.tree.map(abs, state)
  kwargs = {'train': False} if 'train' in inspect.signature(module.__call__).parameters else {}

  def apply_fn(params: ArrayTree, inputs: jax.Array) -> jax.Array:
    return module.apply({'params': params, **state}, inputs, **kwargs)

  return apply_fn
