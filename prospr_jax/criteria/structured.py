"""Structured pruning: one mask entry per output channel, the classifier left whole; what a channel costs.

Masking the classifier's output channels would delete classes, so by default
the output layer, the last prunable kernel the forward pass uses, carries no
mask. It is found by reading the order of first use off the loss's jaxpr, as
are the output positions of each kernel's convolution or matmul (a channel's
FLOPs, for 3SP).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core as jex
from chex import ArrayTree

from prospr_jax import masks as masks_lib


def _sub_jaxpr(eqn: Any) -> Any | None:
  """The one inner jaxpr of a call-like equation whose inputs map one to one, else None."""
  subs = list(jex.jaxprs_in_params(eqn.params))
  if len(subs) == 1 and len(subs[0].invars) == len(eqn.invars):
    return subs[0]
  return None


def _first_uses(jaxpr: Any, leaf_of: dict[Any, int], clock: list[int], first: dict[int, int]) -> None:
  for eqn in jaxpr.eqns:
    sub = _sub_jaxpr(eqn)
    if sub is not None:
      inner = {v_in: leaf_of[v] for v, v_in in zip(eqn.invars, sub.invars)
               if isinstance(v, jex.Var) and v in leaf_of}
      _first_uses(sub, inner, clock, first)
      continue
    clock[0] += 1
    for v in eqn.invars:
      if isinstance(v, jex.Var) and v in leaf_of:
        first.setdefault(leaf_of[v], clock[0])


def forward_order(loss_fn: Callable[[ArrayTree, Any], Any], params: ArrayTree, batch: Any) -> list[int]:
  """Indices of ``jax.tree.leaves(params)`` in the order the loss first uses them (unused last)."""
  leaves, treedef = jax.tree.flatten(params)
  abstract = lambda x: jax.ShapeDtypeStruct(jax.numpy.shape(x), jax.numpy.result_type(x))
  with jax.disable_jit():
    closed = jax.make_jaxpr(lambda ls, b: loss_fn(jax.tree.unflatten(treedef, ls), b))(
        [abstract(x) for x in leaves], jax.tree.map(abstract, batch))
  first: dict[int, int] = {}
  _first_uses(closed.jaxpr, {v: i for i, v in enumerate(closed.jaxpr.invars)}, [0], first)
  return sorted(range(len(leaves)), key=lambda i: first.get(i, float('inf')))


def output_layer(loss_fn: Callable[[ArrayTree, Any], Any], params: ArrayTree, batch: Any,
                 prunable: masks_lib.Prunable | None = None) -> str:
  """Name of the last prunable leaf the forward pass uses: the classifier."""
  prunable = prunable or masks_lib.default_prunable
  paths = [path for path, _ in jax.tree_util.tree_leaves_with_path(params)]
  leaves = jax.tree.leaves(params)
  candidates = [i for i in forward_order(loss_fn, params, batch)
                if prunable(masks_lib.path_names(paths[i]), leaves[i])]
  if not candidates:
    raise ValueError('prunable selects no parameter, so there is no output layer to leave unmasked')
  return masks_lib.layer_name(paths[candidates[-1]])


def channel_prunable(loss_fn: Callable[[ArrayTree, Any], Any], params: ArrayTree, batch: Any) -> masks_lib.Prunable:
  """The default ``prunable`` of structured mode: every kernel (``ndim > 1``) but the output layer."""
  head = output_layer(loss_fn, params, batch)

  def prunable(path: masks_lib.Path, leaf: Any) -> bool:
    return masks_lib.default_prunable(path, leaf) and '/'.join(path) != head

  return prunable


_PASS_THROUGH = ('convert_element_type', 'reshape', 'copy', 'copy_p')


def _conv_positions(eqn: Any, batch_size: int) -> float | None:
  """Output positions per example of a convolution over the whole batch, else None (e.g. one batch chunk)."""
  out = eqn.outvars[0].aval
  batch_dim, feature_dim = eqn.params['dimension_numbers'].out_spec[:2]
  if out.shape[batch_dim] != batch_size:
    return None
  return out.size / (batch_size * out.shape[feature_dim])


def _positions(jaxpr: Any, origin: dict[Any, int], batch_size: int, leaves: list[Any],
               found: dict[int, float | None]) -> None:
  for eqn in jaxpr.eqns:
    sub = _sub_jaxpr(eqn)
    if sub is not None:
      inner = {v_in: origin[v] for v, v_in in zip(eqn.invars, sub.invars) if isinstance(v, jex.Var) and v in origin}
      _positions(sub, inner, batch_size, leaves, found)
      continue
    sources = [origin[v] for v in eqn.invars if isinstance(v, jex.Var) and v in origin]
    if not sources:
      continue
    kernel = sources[-1]
    if eqn.primitive.name == 'conv_general_dilated':
      found.setdefault(kernel, _conv_positions(eqn, batch_size))
    elif eqn.primitive.name == 'dot_general':
      # a Dense kernel's matmul; a convolution kernel in a matmul is a transform (Winograd) or im2col's columns
      out = eqn.outvars[0].aval
      dense = jax.numpy.ndim(leaves[kernel]) == 2
      found.setdefault(kernel, out.size / (batch_size * jax.numpy.shape(leaves[kernel])[-1]) if dense else None)
    elif eqn.primitive.name in _PASS_THROUGH:
      origin[eqn.outvars[0]] = sources[0]


def kernel_positions(loss_fn: Callable[[ArrayTree, Any], Any], params: ArrayTree, batch: Any) -> dict[str, float]:
  """Per kernel (``ndim > 1``) the loss uses in a conv or a matmul: its output positions per example (H * W, 1).

  Read off the loss's jaxpr; ``batch``'s leading axis is the batch. A channel of
  kernel ``w`` then costs ``2 * positions * w.size / C_out`` FLOPs per example.
  Exact where each convolution kernel meets one ``lax`` convolution over the
  whole batch; a kernel computed otherwise (Winograd's transforms, im2col's
  matmul, batch chunks) raises: count from shapes instead (``prospr_jax.output_positions``).
  """
  leaves, treedef = jax.tree.flatten(params)
  names = [masks_lib.layer_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  abstract = lambda x: jax.ShapeDtypeStruct(jax.numpy.shape(x), jax.numpy.result_type(x))
  with jax.disable_jit():
    closed = jax.make_jaxpr(lambda ls, b: loss_fn(jax.tree.unflatten(treedef, ls), b))(
        [abstract(x) for x in leaves], jax.tree.map(abstract, batch))
  batch_size = jax.numpy.shape(jax.tree.leaves(batch)[0])[0]
  found: dict[int, float | None] = {}
  origin = {v: i for i, v in enumerate(closed.jaxpr.invars[:len(leaves)]) if jax.numpy.ndim(leaves[i]) > 1}
  _positions(closed.jaxpr, origin, batch_size, leaves, found)
  unreadable = sorted(names[i] for i, positions in found.items() if positions is None)
  if unreadable:
    raise ValueError(f'cannot read the output positions of {", ".join(unreadable)} off the loss: they are not '
                     'computed by one lax convolution over the batch (Winograd, im2col or batch chunks). Count them '
                     'from shapes: positions=prospr_jax.output_positions(model, variables, input_shape)')
  return {names[i]: positions for i, positions in found.items()}
