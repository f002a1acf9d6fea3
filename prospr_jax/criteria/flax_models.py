"""What Flax users hold, turned into params and a loss: a TrainState, an NNX module, a linen model in NNX.

- a ``flax.training.train_state.TrainState``, or any object with ``apply_fn``
  (a linen ``Module.apply``) and ``params``; a ``batch_stats`` field (Flax's
  imagenet example) is the BatchNorm state. Scores mirror ``state.params``;
- a ``flax.nnx.Module``, native or a linen model in ``nnx.bridge.ToNNX``. Scores
  mirror its ``nnx.Param`` state as a pure dict,
  ``nnx.to_pure_dict(nnx.state(model, nnx.Param))``: attribute names as keys,
  list entries by index, so ``prunable`` sees paths like ``('layers', '0', 'kernel')``.
  ``prospr_jax.apply_mask(nnx.state(model, nnx.Param), masks)`` takes them back.

The loss is softmax cross-entropy on ``(x, y)`` or ``{'image', 'label'}``
batches, BatchNorm in train mode (batch statistics; the running statistics it
updates are thrown away, the module is never mutated); Dropout keeps the
module's own setting. A linen model is put in train mode by its ``train``
argument, or the one ``train_kwarg`` names (``losses.mode_kwargs``). SynFlow's
``apply_fn`` runs in eval mode with absolute non-parameter state.

The functions built for one model and state are kept (``_cached``), so repeated
calls on it pass jit the same ``loss_fn`` and reuse its compiled program.
Flax is never imported here: an NNX module exists only if ``flax.nnx`` is loaded.
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from chex import ArrayTree

from prospr_jax import losses, masks as masks_lib

LossFn = Callable[[ArrayTree, Any], jax.Array]
ApplyFn = Callable[[ArrayTree, jax.Array], jax.Array]

STATE_COLLECTIONS = ('batch_stats',)  # TrainState fields holding linen variable collections besides params
_TRAIN_MODE = {'use_running_average': False}  # NNX BatchNorm on batch statistics; Dropout keeps its own mode
_EVAL_MODE = {'use_running_average': True, 'deterministic': True}
_CACHE_SIZE = 8
_CACHE: collections.OrderedDict[tuple[Any, ...], tuple[list[Any], Any]] = collections.OrderedDict()


class Model(NamedTuple):
  """Params pulled out of a model, with builders (given ``train_kwarg``) of its loss and SynFlow apply functions."""
  params: ArrayTree
  loss_fn: Callable[[str | None], LossFn]
  apply_fn: Callable[[str | None], ApplyFn]


def _cached(key: tuple[Any, ...], held: list[Any], build: Callable[[], Any]) -> Any:
  """``build()``, or what it returned for the same ``key`` and the very objects ``held`` (by identity; an entry holds
  them, so their ids are not reused while it lives). The last ``_CACHE_SIZE`` entries are kept."""
  full = (*key, tuple(id(x) for x in held))
  if full in _CACHE:
    _CACHE.move_to_end(full)
    return _CACHE[full][1]
  value = build()
  _CACHE[full] = (held, value)
  if len(_CACHE) > _CACHE_SIZE:
    _CACHE.popitem(last=False)
  return value


def _nnx_module() -> Any:
  """``flax.nnx`` if something imported it, else None (then no object can be an NNX module)."""
  return sys.modules.get('flax.nnx')


def is_nnx_module(target: Any) -> bool:
  """Whether ``target`` is a ``flax.nnx.Module``, without importing Flax."""
  nnx = _nnx_module()
  return nnx is not None and isinstance(target, nnx.Module)


def is_train_state(target: Any) -> bool:
  """Duck-typed TrainState: an object with ``apply_fn`` and ``params`` attributes."""
  return hasattr(target, 'apply_fn') and hasattr(target, 'params')


def _linen_module(state: Any) -> Any:
  """The linen module behind ``state.apply_fn`` (a bound ``Module.apply``); ValueError otherwise."""
  module = getattr(state.apply_fn, '__self__', None)
  if module is None or not callable(getattr(module, 'apply', None)):
    raise ValueError(
        f'state.apply_fn is {state.apply_fn!r}, not a bound flax.linen Module.apply, so no loss can be built '
        'from it: create the state with apply_fn=model.apply, or pass loss_fn= (and apply_fn= for synflow)')
  return module


def train_state_model(state: Any) -> Model:
  """``state.params``, and losses from the linen module of ``state.apply_fn`` with its ``batch_stats``."""
  stats = {name: getattr(state, name) for name in STATE_COLLECTIONS if hasattr(state, name)}
  variables = {'params': state.params, **stats}
  held = [getattr(state.apply_fn, '__self__', state.apply_fn), *jax.tree.leaves(stats)]
  key = ('linen', jax.tree.structure(stats))

  def loss_fn(train_kwarg: str | None) -> LossFn:
    return _cached((*key, 'loss', train_kwarg), held,
                   lambda: losses.flax_loss_fn(_linen_module(state), variables, train_kwarg=train_kwarg))

  def apply_fn(train_kwarg: str | None) -> ApplyFn:
    return _cached((*key, 'apply', train_kwarg), held, lambda: losses.flax_apply_fn(
        _linen_module(state), variables, absolute_state=True, train_kwarg=train_kwarg))

  return Model(params=state.params, loss_fn=loss_fn, apply_fn=apply_fn)


def _absolute(x: Any) -> Any:
  return jnp.abs(x) if jnp.issubdtype(jnp.result_type(x), jnp.inexact) else x


def nnx_model(module: Any) -> Model:
  """The module's ``nnx.Param`` state as a pure dict, and losses on copies of the module in train/eval mode."""
  nnx = _nnx_module()
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)
  rest = jax.tree.map(lambda x: x, rest)  # new Variables: the module's own are never written
  linen = getattr(module, 'to_nnx__module', None)  # nnx.bridge.ToNNX: a linen module inside
  stateful = any(not masks_lib.path_names(path)[0].startswith('to_nnx__')
                 for path, _ in jax.tree_util.tree_leaves_with_path(rest))

  def build(pure_params: ArrayTree, state: Any, mode: dict[str, bool]) -> Any:
    template = jax.tree.map(lambda x: x, params)
    nnx.replace_by_pure_dict(template, pure_params)
    copy = nnx.merge(graphdef, template, state, copy=True)
    copy.set_attributes(raise_if_not_found=False, **mode)
    return copy

  def call_kwargs(train: bool, train_kwarg: str | None) -> dict[str, Any]:
    if linen is not None:
      kwargs, mutable = losses.mode_kwargs(linen, train=train, train_kwarg=train_kwarg, stateful=stateful,
                                           apply_kwargs={})
      return {**kwargs, 'mutable': True} if mutable else kwargs  # the copy takes the updates, then is dropped
    return {} if train_kwarg in (losses.FIND, None) else {train_kwarg: train}

  def loss_fn(train_kwarg: str | None) -> LossFn:
    kwargs = call_kwargs(True, train_kwarg)

    def loss(pure_params: ArrayTree, batch: Any) -> jax.Array:
      inputs, labels = losses.split_batch(batch)
      return losses.softmax_cross_entropy(build(pure_params, rest, _TRAIN_MODE)(inputs, **kwargs), labels)
    return loss

  def apply_fn(train_kwarg: str | None) -> ApplyFn:
    kwargs = call_kwargs(False, train_kwarg)
    absolute = jax.tree.map(_absolute, rest)
    return lambda pure_params, inputs: build(pure_params, absolute, _EVAL_MODE)(inputs, **kwargs)

  held = jax.tree.leaves(rest)
  key = ('nnx', graphdef, jax.tree.structure(params))
  return Model(params=nnx.to_pure_dict(params),
               loss_fn=lambda kwarg: _cached((*key, 'loss', kwarg), held, lambda: loss_fn(kwarg)),
               apply_fn=lambda kwarg: _cached((*key, 'apply', kwarg), held, lambda: apply_fn(kwarg)))


def as_model(target: Any) -> Model | None:
  """A ``Model`` from an NNX module or a TrainState; None for a plain params pytree."""
  if is_nnx_module(target):
    return nnx_model(target)
  if is_train_state(target):
    return train_state_model(target)
  return None
