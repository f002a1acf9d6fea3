"""Scoring channels with any criterion: tied channels packed into one mask entry; what a channel costs (3SP).

``pack`` stacks what one channel's mask entry multiplies (the scale and offset
of the normalisations after its writers, or the writers' kernels) into one leaf,
so a criterion's structured mask on it is one entry per group channel and
``dL/dc`` is the sum over the tied writers (the chain rule). ``score_channels``
runs any registry criterion that way. ``channel_flops`` gives
the FLOPs per example each channel's removal saves (3SP's compute cost, the one
definition: ``score_channels`` passes it to any criterion taking ``channel_costs``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from chex import ArrayTree

from prospr_jax.channels.groups import ChannelGroup, ChannelMask, ChannelPlan, Module, named_paths
from prospr_jax.criteria import scores as scores_lib, structured as structured_lib

Piece = tuple[Module, str, tuple[int, ...]]  # (module, leaf name, channels on the leaf's last axis)


def gated_pieces(group: ChannelGroup, gate: str) -> tuple[Piece, ...]:
  """The parameter slices one entry of ``group``'s mask multiplies when a criterion scores it.

  ``'output'``: the scale and offset of every normalisation after the writers (``c * (scale * x_hat + offset)``
  gates the channel's output where removal acts); a group without normalisation gates its writers' kernels, which
  gives the same gradient there. ``'kernel'``: the writers' kernels (ProsPr's definition).
  """
  if gate == scores_lib.OUTPUT and group.norms:
    return tuple((slot.module, leaf, slot.channels) for slot in group.norms for leaf in ('scale', 'bias'))
  return tuple((slot.module, 'kernel', slot.channels) for slot in group.writers)


def pack(plan: ChannelPlan, params: ArrayTree, gate: str = scores_lib.KERNEL
         ) -> tuple[ArrayTree, Callable[[ArrayTree], ArrayTree]]:
  """``({'groups': {name: (rows, size)}, 'rest': params without the gated slices}, unpack)``, nested dicts.

  Each group's leaf stacks the slices its mask entry multiplies (``gated_pieces``: the writers' kernels, or the
  scale and offset of the normalisations after them), so a ``(size,)`` mask on it gates every tied writer at once
  and a criterion's ``dL/dc`` of that entry is the sum over them (the chain rule). A permutation of the
  parameters: SGD, momentum and weight decay act on it as on ``params``.
  """
  pieces = {group.name: gated_pieces(group, gate) for group in plan.groups}
  leaves = {(*names[:-1], names[-1]): leaf for names, leaf in named_paths(params)}
  owned: dict[tuple[str, ...], list[tuple[int, ...]]] = {}
  for group_pieces in pieces.values():
    for module, leaf, channels in group_pieces:
      owned.setdefault((*module, leaf), []).append(channels)
  for key, parts in owned.items():
    covered = np.sort(np.concatenate([np.asarray(c, int) for c in parts]))
    if key not in leaves or not np.array_equal(covered, np.arange(jnp.shape(leaves[key])[-1])):
      raise ValueError(f'{plan.architecture} plan does not cover every output channel of {"/".join(key)} once')
  groups = {}
  for group in plan.groups:
    rows = [jnp.take(leaves[(*module, leaf)], np.asarray(channels, int), axis=-1).reshape(-1, group.size)
            for module, leaf, channels in pieces[group.name]]
    groups[group.name] = jnp.concatenate(rows, axis=0) if len(rows) > 1 else rows[0]
  rest = _without(params, set(owned))
  shapes = {key: jnp.shape(leaves[key]) for key in owned}

  def unpack(packed: ArrayTree) -> ArrayTree:
    blocks: dict[tuple[str, ...], list] = {}
    for group in plan.groups:
      offset = 0
      for module, leaf, channels in pieces[group.name]:
        shape = shapes[(*module, leaf)][:-1] + (group.size,)
        rows = int(np.prod(shape[:-1]))
        block = packed['groups'][group.name][offset:offset + rows].reshape(shape)
        offset += rows
        blocks.setdefault((*module, leaf), []).append((channels, block))
    rebuilt = {}
    for key, parts in blocks.items():
      order = np.argsort(np.concatenate([np.asarray(c, int) for c, _ in parts]))
      rebuilt[key] = jnp.take(jnp.concatenate([b for _, b in parts], axis=-1), order, axis=-1)
    return _with(packed['rest'], rebuilt)

  return {'groups': groups, 'rest': rest}, unpack


def _without(tree: Mapping[str, Any], keys: set[tuple[str, ...]], prefix: Module = ()) -> dict[str, Any]:
  """A copy of a nested-dict params tree without the leaves at ``keys``."""
  return {key: _without(value, keys, (*prefix, key)) if isinstance(value, Mapping) else value
          for key, value in tree.items() if (*prefix, key) not in keys}


def _with(tree: Mapping[str, Any], leaves: dict[tuple[str, ...], Any], prefix: Module = ()) -> dict[str, Any]:
  """``_without`` undone: ``leaves[path]`` put back at ``path``."""
  out = {key: _with(value, leaves, (*prefix, key)) if isinstance(value, Mapping) else value
         for key, value in tree.items()}
  out.update({path[-1]: leaf for path, leaf in leaves.items() if path[:-1] == prefix})
  return out


def channel_flops(plan: ChannelPlan, params: ArrayTree, positions: Mapping[str, float]) -> ChannelMask:
  """Per channel, the FLOPs per example its removal saves in the dense network: producing it and reading it.

  ``positions[name]``: output positions per example of the layer of kernel
  ``name``, e.g. H * W of a conv: ``prospr_jax.output_positions(model, variables,
  input_shape)`` counts them from shapes, the same under every convolution implementation.
  """
  sizes = {'/'.join(names): jnp.shape(x) for names, x in named_paths(params)}
  cost = lambda slot, per: 2.0 * positions['/'.join(slot.module + ('kernel',))] * per
  flops = {}
  for group in plan.groups:
    total = 0.0
    for slot in group.writers:
      shape = sizes['/'.join(slot.module + ('kernel',))]
      total += cost(slot, np.prod(shape[:-1]))  # one output channel: every weight of its filter
    for slot in group.readers:
      shape = sizes['/'.join(slot.module + ('kernel',))]
      total += cost(slot, np.prod(shape) / shape[-2] * slot.spatial)  # one input channel's rows
    flops[group.name] = np.full(group.size, total)
  return flops


def plan_flops(plan: ChannelPlan, params: ArrayTree, loss_fn: Callable[[ArrayTree, Any], jax.Array],
               batch: Any) -> ChannelMask:
  """``channel_flops`` with each kernel's output positions read off ``loss_fn(params, batch)``'s jaxpr
  (``criteria.structured.kernel_positions``: exact where every kernel meets one ``lax`` convolution or matmul)."""
  return channel_flops(plan, params, structured_lib.kernel_positions(loss_fn, params, batch))


def takes_channel_costs(criterion: Callable[..., ArrayTree]) -> bool:
  """Whether ``criterion`` divides by channel costs: a registry entry saying so, or a ``channel_costs`` keyword."""
  flag = getattr(criterion, 'channel_costs', None)
  if isinstance(flag, bool):  # a registry Criterion
    return flag
  try:
    return 'channel_costs' in inspect.signature(criterion).parameters
  except (TypeError, ValueError):  # a callable without a signature
    return False


def _refuse_a_kernel_gate_that_scores_epsilon(criterion: Callable[..., ArrayTree], plan: ChannelPlan,
                                              batches: Any, gate: str) -> None:
  """ProsPr's kernel gate with M = 0 differentiates train-mode BatchNorm at the initial weights: only eps leaks."""
  fn = inspect.unwrap(getattr(criterion, 'fn', criterion))
  try:
    takes_steps = 'inner_lr' in inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return
  if (gate == scores_lib.KERNEL and takes_steps and any(group.norms for group in plan.groups)
      and not isinstance(batches, Iterator) and scores_lib.num_batches(batches) == 1):
    raise ValueError(
        'structured ProsPr with M = 0 (num_steps=0) on a network with normalisation scores only its epsilon: its '
        'mask sits on the kernels before a train-mode BatchNorm, which cancels any rescaling of its input. Use '
        'structured SNIP (criterion=snip), which gates each channel after its normalisation, or M >= 1')


def score_channels(criterion: Callable[..., ArrayTree], plan: ChannelPlan, params: ArrayTree, batches: Any, *,
                   loss_fn: Callable[[ArrayTree, Any], jax.Array] | None = None,
                   apply_fn: Callable[[ArrayTree, jax.Array], jax.Array] | None = None,
                   channel_costs: ChannelMask | None = None, positions: Mapping[str, float] | None = None,
                   gate: str | None = None, **kwargs: Any) -> ChannelMask:
  """Channel scores ``{group name: (size,)}`` from any criterion of the registry, tied groups scored as one.

  The criterion sees the packed parameters (``pack``) with ``structured=True``
  and one mask entry per group channel, gated where it declares
  (``criteria.scores.channel_gate``: after each channel's normalisation, or on
  its writers' kernels for ProsPr, magnitude, random and SynFlow) unless
  ``gate`` says; ``loss_fn`` and ``apply_fn`` see them unpacked. A criterion
  taking ``channel_costs`` (3SP) gets ``channel_flops`` unless ``channel_costs``
  is given: from ``positions`` (``prospr_jax.output_positions``, counted from
  shapes) or else read off ``loss_fn``'s first batch.
  """
  gate = gate or scores_lib.gate_of(criterion)
  _refuse_a_kernel_gate_that_scores_epsilon(criterion, plan, batches, gate)
  if channel_costs is None and takes_channel_costs(criterion):
    if positions is not None:
      channel_costs = channel_flops(plan, params, positions)
    elif loss_fn is None:
      raise ValueError('this criterion divides by what each channel costs: pass positions= (prospr_jax.'
                       'output_positions(model, variables, input_shape)), loss_fn= or channel_costs=')
    else:
      channel_costs = plan_flops(plan, params, loss_fn, scores_lib.batch_at(batches, 0))
  packed, unpack = pack(plan, params, gate)
  if loss_fn is not None:
    kwargs['loss_fn'] = lambda p, batch: loss_fn(unpack(p), batch)
  if apply_fn is not None:
    kwargs['apply_fn'] = lambda p, x: apply_fn(unpack(p), x)
  if channel_costs is not None:  # mirrors the scores: costs on the groups, None on the rest
    kwargs['channel_costs'] = {'groups': {n: jnp.asarray(c) for n, c in channel_costs.items()},
                               'rest': jax.tree.map(lambda _: None, packed['rest'])}
  scores = criterion(packed, batches, structured=True, prunable=lambda path, leaf: path[0] == 'groups', **kwargs)
  return dict(scores['groups'])
