"""Losses, and the one-liner that turns a Flax module into a criterion's ``loss_fn(params, batch)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from chex import ArrayTree


class InputError(ValueError):
  """A model or batch the loss cannot take, the message naming the fix (no note about batch shapes needed)."""


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy with integer labels (torch's ``F.cross_entropy``); NaN, and NaN gradients, if a label
  is outside ``[0, classes)``, never the loss of a wrapped-around class."""
  if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
    raise InputError(f'labels must be integer class indices, got {jnp.result_type(labels)} of shape '
                     f'{jnp.shape(labels)} (one-hot?): pass labels.argmax(-1), or a loss_fn of your own')
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


FIND = 'find'  # train_kwarg's default: the module's ``train`` argument, if its ``__call__`` takes one


def _call_signature(module: Any) -> str:
  try:
    return f'{type(module).__name__}.__call__{inspect.signature(module.__call__)}'
  except (TypeError, ValueError):
    return f'{type(module).__name__}.__call__'


def mode_kwargs(module: Any, *, train: bool, train_kwarg: str | None, stateful: bool,
                apply_kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
  """(apply kwargs, whether the state collections are mutable) that run a linen ``module`` in train or eval mode.

  ``train_kwarg`` names the argument of ``module.__call__`` that switches
  train mode (``FIND``: ``train`` if it takes one; None: none). A module with
  state (BatchNorm) and no argument found is refused, not silently run in
  whatever mode it defaults to, unless ``apply_kwargs`` set an argument of its ``__call__`` (``training=True``).
  """
  kwargs = dict(apply_kwargs)
  if train_kwarg == FIND:
    parameters = inspect.signature(module.__call__).parameters
    train_kwarg = 'train' if 'train' in parameters else None
    if train_kwarg is None and stateful and not any(name in parameters for name in apply_kwargs):
      flags = [name for name, p in parameters.items() if isinstance(p.default, bool) or 'bool' in str(p.annotation)]
      raise InputError(
          f"{_call_signature(module)} takes no `train` argument, but the model has state (BatchNorm's batch_stats) "
          'that train mode updates, so prospr_jax cannot choose its mode: name the argument that switches train '
          f"mode, train_kwarg='{flags[0] if flags else '<name>'}', or train_kwarg=None to call the model as it is")
  if train_kwarg is not None:
    kwargs.setdefault(train_kwarg, train)
  return kwargs, bool(stateful and (kwargs[train_kwarg] if train_kwarg is not None else train))


def _missing_collection(error: Exception) -> InputError:
  """Flax's ScopeCollectionNotFound (a TrainState without ``batch_stats``) as a ValueError naming the fix."""
  return InputError(
      f'the model reads a variable collection the variables lack ({error}). A BatchNorm model needs its '
      "batch_stats: pass variables with them, or a TrainState with a batch_stats field (class "
      "State(train_state.TrainState): batch_stats: Any; State.create(..., batch_stats=variables['batch_stats']))")


def flax_loss_fn(
    module: Any,
    variables: Mapping[str, ArrayTree],
    *,
    loss: Callable[[jax.Array, jax.Array], jax.Array] = softmax_cross_entropy,
    temperature: float = 1.0,
    train_kwarg: str | None = FIND,
    **apply_kwargs: Any,
) -> Callable[[ArrayTree, Any], jax.Array]:
  """``loss_fn(params, batch)`` for a ``flax.linen`` module, e.g. ``flax_loss_fn(model, variables)``.

  ``params`` replaces ``variables['params']``; other collections (BatchNorm's
  ``batch_stats``) are held fixed. The module runs in train mode, so BatchNorm
  uses batch statistics as in training, and the running statistics it updates
  are thrown away: with ``train=True`` if its ``__call__`` takes ``train``,
  else with ``train_kwarg=True`` for the argument you name
  (``train_kwarg='training'``); a module with BatchNorm state and no such
  argument is refused. ``apply_kwargs`` go to ``module.apply``.
  """
  state = {name: value for name, value in variables.items() if name != 'params'}
  apply_kwargs, mutable = mode_kwargs(module, train=True, train_kwarg=train_kwarg, stateful=bool(state),
                                      apply_kwargs=apply_kwargs)
  mutable = list(state) if mutable else False  # no state: plain outputs

  def loss_fn(params: ArrayTree, batch: Any) -> jax.Array:
    inputs, labels = split_batch(batch)
    try:
      out = module.apply({'params': params, **state}, inputs, mutable=mutable, **apply_kwargs)
    except Exception as error:  # noqa: BLE001 - re-raised, or replaced by the ValueError naming its fix
      if type(error).__name__ != 'ScopeCollectionNotFound':
        raise
      raise _missing_collection(error) from None
    logits = out[0] if mutable else out
    return loss(logits / temperature, labels)

  return loss_fn


def flax_apply_fn(module: Any, variables: Mapping[str, ArrayTree], *, absolute_state: bool = False,
                  train_kwarg: str | None = FIND) -> Callable[[ArrayTree, jax.Array], jax.Array]:
  """``apply_fn(params, inputs) -> outputs`` in eval mode (running BatchNorm statistics), for SynFlow.

  ``absolute_state`` makes the non-parameter collections absolute, as the
  SynFlow authors' code does to the whole state dict before scoring.
  ``train_kwarg`` as for ``flax_loss_fn``, set to False.
  """
  state = {name: value for name, value in variables.items() if name != 'params'}
  if absolute_state:
    state = jax.tree.map(abs, state)
  kwargs, _ = mode_kwargs(module, train=False, train_kwarg=train_kwarg, stateful=bool(state), apply_kwargs={})

  def apply_fn(params: ArrayTree, inputs: jax.Array) -> jax.Array:
    return module.apply({'params': params, **state}, inputs, **kwargs)

  return apply_fn
