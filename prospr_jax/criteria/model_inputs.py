"""What Flax users hold, accepted in place of ``params`` + ``loss_fn``: a TrainState or an NNX module.

``accepts_models`` lets a criterion's first argument be a params pytree, with
``loss_fn`` (and ``apply_fn`` for SynFlow) given, or a model
(``criteria/flax_models.py``: a TrainState, an NNX module, a linen model in
``nnx.bridge.ToNNX``). From a model the loss defaults to the model's own
(softmax cross-entropy, BatchNorm in train mode); a ``loss_fn`` given alongside
is used instead, on the extracted params (for NNX: the pure dict of its
``nnx.Param`` state). ``train_kwarg='training'`` names a linen model's train
flag when it is not ``train``. Scores mirror the params the criterion saw.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
from chex import ArrayTree

from prospr_jax import losses, precision as precision_lib
from prospr_jax.criteria import flax_models

LossFn = Callable[[ArrayTree, Any], jax.Array]
ApplyFn = Callable[[ArrayTree, jax.Array], jax.Array]

_EXAMPLES = {
    'loss_fn': 'loss_fn=<loss_fn(params, batch) -> scalar>, e.g. prospr_jax.flax_loss_fn(model, variables)',
    'apply_fn': ('apply_fn=<apply_fn(params, inputs) -> outputs, eval mode>, e.g. '
                 'prospr_jax.flax_apply_fn(model, variables, absolute_state=True)'),
}
_DEFAULTS = {'loss_fn': 'softmax cross-entropy, BatchNorm in train mode', 'apply_fn': 'eval mode, absolute state'}


def _optional(parameter: inspect.Parameter) -> inspect.Parameter:
  annotation = parameter.annotation
  annotation = f'{annotation} | None' if isinstance(annotation, str) else annotation
  return parameter.replace(default=None, annotation=annotation)


def _model_note(name: str) -> str:
  """The docstring paragraph a wrapped criterion gains: what ``name`` defaults to from a model."""
  return (f'\n\n  ``params`` may also be a Flax TrainState or an NNX module; ``{name}`` then defaults to the '
          f"model's ({_DEFAULTS[name]}; ``train_kwarg`` names a linen train flag other than ``train``), see "
          '``prospr_jax.criteria.flax_models``.\n')


def _optional_signature(fn: Callable[..., Any], names: tuple[str, ...]) -> inspect.Signature:
  """``fn``'s signature with ``names`` defaulting to None, as the wrapper fills them from a model."""
  signature = inspect.signature(fn)
  return signature.replace(parameters=[
      _optional(p) if p.name in names and p.default is p.empty else p for p in signature.parameters.values()])


def _with_keyword(signature: inspect.Signature, name: str, default: Any, annotation: str) -> inspect.Signature:
  """The signature with keyword ``name``: ``precision='float32'`` (``prospr_jax.precision``: float32, float64 or
  highest), ``train_kwarg`` (a linen model's train flag, ``losses.mode_kwargs``)."""
  if name in signature.parameters:
    return signature
  extra = inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
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
      model = flax_models.as_model(args[0]) if args else None
      train_kwarg = kwargs.pop('train_kwarg', losses.FIND) if fills else losses.FIND
      if model is not None:
        for name in fills:
          if kwargs.get(name) is None:
            kwargs[name] = getattr(model, name)(train_kwarg)
        args = (model.params, *args[1:])
      elif train_kwarg != losses.FIND:
        raise ValueError(f'train_kwarg={train_kwarg!r} sets the mode of a model the criterion runs, but it got a '
                         'params tree: pass it where the loss is built, '
                         'flax_loss_fn(model, variables, train_kwarg=...)')
      elif args and needs is not None and kwargs.get(needs) is None:
        raise ValueError(
            f'{fn.__name__} got a params tree but no {needs}, so it has no model to run. Pass '
            f'{_EXAMPLES[needs]}; or pass a flax TrainState or an NNX module in place of params.')
      precision = kwargs.pop('precision', 'float32')
      with precision_lib.scoring(precision):
        return fn(*(precision_lib.cast(a, precision) for a in args), **kwargs)

    signature = _with_keyword(_optional_signature(fn, fills), 'precision', 'float32', 'str')
    if fills:
      signature = _with_keyword(signature, 'train_kwarg', losses.FIND, 'str | None')
    wrapped.__signature__ = signature
    wrapped.__doc__ = (fn.__doc__ or '').rstrip() + ''.join(_model_note(name) for name in fills)
    return wrapped

  return decorate
