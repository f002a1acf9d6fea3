"""What Flax users hold, accepted in place of ``params`` + ``loss_fn``: a TrainState or an NNX module.

``accepts_models`` lets a criterion's first argument be
- a params pytree, with ``loss_fn`` (and ``apply_fn`` for SynFlow) given;
- a ``flax.training.train_state.TrainState``, or any object with ``apply_fn``
  (a linen ``Module.apply``) and ``params``; a ``batch_stats`` field (Flax's
  imagenet example) is the BatchNorm state. Scores mirror ``state.params``;
- a ``flax.nnx.Module``. Scores mirror its ``nnx.Param`` state as a pure dict,
  ``nnx.to_pure_dict(nnx.state(model, nnx.Param))``: attribute names as keys, list
  entries by index, so ``prunable`` sees paths like ``('layers', '0', 'kernel')``.
  Apply a mask with ``nnx.replace_by_pure_dict(p, apply_mask(nnx.to_pure_dict(p), masks))``
  for ``p = nnx.state(model, nnx.Param)``, then ``nnx.update(model, p)``.

From a model the loss is softmax cross-entropy on ``(x, y)`` or
``{'image', 'label'}`` batches, BatchNorm in train mode (batch statistics; the
running statistics it updates are thrown away, the module is never mutated);
Dropout keeps the module's own setting. A ``loss_fn`` given alongside a model
is used instead, on the extracted params (for NNX: the pure dict above).
SynFlow's ``apply_fn`` runs in eval mode with absolute non-parameter state.
Scores mirror the params the criterion saw, so they need no conversion back.
Flax is never imported here: an NNX module exists only if ``flax.nnx`` is loaded.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from chex import ArrayTree

from prospr_jax import losses, precision as precision_lib

LossFn = Callable[[ArrayTree, Any], jax.Array]
ApplyFn = Callable[[ArrayTree, jax.Array], jax.Array]

STATE_COLLECTIONS = ('batch_stats',)  # TrainState fields holding linen variable collections besides params
_TRAIN_MODE = {'use_running_average': False}  # NNX BatchNorm on batch statistics; Dropout keeps its own mode
_EVAL_MODE = {'use_running_average': True, 'deterministic': True}
_EXAMPLES = {
    'loss_fn': 'loss_fn=<loss_fn(params, batch) -> scalar>, e.g. prospr_jax.flax_loss_fn(model, variables)',
    'apply_fn': ('apply_fn=<apply_fn(params, inputs) -> outputs, eval mode>, e.g. '
                 'prospr_jax.flax_apply_fn(model, variables, absolute_state=True)'),
}
_DEFAULTS = {'loss_fn': 'softmax cross-entropy, BatchNorm in train mode', 'apply_fn': 'eval mode, absolute state'}


class Model(NamedTuple):
  """Params pulled out of a model, with builders for its default loss and SynFlow apply functions."""
  params: ArrayTree
  loss_fn: Callable[[], LossFn]
  apply_fn: Callable[[], ApplyFn]


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
  variables = {'params': state.params,
               **{name: getattr(state, name) for name in STATE_COLLECTIONS if hasattr(state, name)}}
  return Model(
      params=state.params,
      loss_fn=lambda: losses.flax_loss_fn(_linen_module(state), variables),
      apply_fn=lambda: losses.flax_apply_fn(_linen_module(state), variables, absolute_state=True))


def _absolute(x: Any) -> Any:
  return jnp.abs(x) if jnp.issubdtype(jnp.result_type(x), jnp.inexact) else x


def nnx_model(module: Any) -> Model:
  """The module's ``nnx.Param`` state as a pure dict, and losses on copies of the module in train/eval mode."""
  nnx = _nnx_module()
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)
  rest = jax.tree.map(lambda x: x, rest)  # new Variables: the module's own are never written

  def build(pure_params: ArrayTree, state: Any, mode: dict[str, bool]) -> Any:
    template = jax.tree.map(lambda x: x, params)
    nnx.replace_by_pure_dict(template, pure_params)
    copy = nnx.merge(graphdef, template, state, copy=True)
    copy.set_attributes(raise_if_not_found=False, **mode)
    return copy

  def loss_fn() -> LossFn:
    def loss(pure_params: ArrayTree, batch: Any) -> jax.Array:
      inputs, labels = losses.split_batch(batch)
      return losses.softmax_cross_entropy(build(pure_params, rest, _TRAIN_MODE)(inputs), labels)
    return loss

  def apply_fn() -> ApplyFn:
    absolute = jax.tree.map(_absolute, rest)
    return lambda pure_params, inputs: build(pure_params, absolute, _EVAL_MODE)(inputs)

  return Model(params=nnx.to_pure_dict(params), loss_fn=loss_fn, apply_fn=apply_fn)


def as_model(target: Any) -> Model | None:
  """A ``Model`` from an NNX module or a TrainState; None for a plain params pytree."""
  if is_nnx_module(target):
    return nnx_model(target)
  if is_train_state(target):
    return train_state_model(target)
  return None


def _optional(parameter: inspect.Parameter) -> inspect.Parameter:
  annotation = parameter.annotation
  annotation = f'{annotation} | None' if isinstance(annotation, str) else annotation
  return parameter.replace(default=None, annotation=annotation)


def _model_note(name: str) -> str:
  """The docstring paragraph a wrapped criterion gains: what ``name`` defaults to from a model."""
  return (f'\n\n  ``params`` may also be a Flax TrainState or an NNX module; ``{name}`` then defaults to the '
          f"model's ({_DEFAULTS[name]}), see ``prospr_jax.criteria.model_inputs``.\n")


def _optional_signature(fn: Callable[..., Any], names: tuple[str, ...]) -> inspect.Signature:
  """``fn``'s signature with ``names`` defaulting to None, as the wrapper fills them from a model."""
  signature = inspect.signature(fn)
  return signature.replace(parameters=[
      _optional(p) if p.name in names and p.default is p.empty else p for p in signature.parameters.values()])


def _with_precision(signature: inspect.Signature) -> inspect.Signature:
  """The signature with ``precision='float32'`` (``prospr_jax.precision``: float32, float64 or highest)."""
  if 'precision' in signature.parameters:
    return signature
  extra = inspect.Parameter('precision', inspect.Parameter.KEYWORD_ONLY, default='float32', annotation='str')
  parameters = list(signature.parameters.values())
  at = next((i for i, p in enumerate(parameters) if p.kind == p.VAR_KEYWORD), len(parameters))
  return signature.replace(parameters=parameters[:at] + [extra] + parameters[at:])


def accepts_models(needs: str | None = 'loss_fn') -> Callable[[Callable[..., ArrayTree]], Callable[..., ArrayTree]]:
  """Let a criterion take a TrainState or an NNX module in place of ``params`` + ``loss_fn`` (or ``apply_fn``).

  ``needs``: the keyword a plain params tree must come with (``'loss_fn'``,
  ``'apply_fn'`` for SynFlow), or None when the criterion works without it.
  """
  def decorate(fn: Callable[..., ArrayTree]) -> Callable[..., ArrayTree]:
    parameters = inspect.signature(fn).parameters
    first = next(iter(parameters))  # 'params'
    fills = ('apply_fn',) if needs == 'apply_fn' else tuple(n for n in ('loss_fn',) if n in parameters)

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> ArrayTree:
      if not args and first in kwargs:
        args = (kwargs.pop(first),)
      model = as_model(args[0]) if args else None
      if model is not None:
        for name in fills:
          if kwargs.get(name) is None:
            kwargs[name] = getattr(model, name)()
        args = (model.params, *args[1:])
      elif args and needs is not None and kwargs.get(needs) is None:
        raise ValueError(
            f'{fn.__name__} got a params tree but no {needs}, so it has no model to run. Pass '
            f'{_EXAMPLES[needs]}; or pass a flax TrainState or an NNX module in place of params.')
      precision = kwargs.pop('precision', 'float32')
      with precision_lib.scoring(precision):
        return fn(*(precision_lib.cast(a, precision) for a in args), **kwargs)

    wrapped.__signature__ = _with_precision(_optional_signature(fn, fills))
    wrapped.__doc__ = (fn.__doc__ or '').rstrip() + ''.join(_model_note(name) for name in fills)
    return wrapped

  return decorate
