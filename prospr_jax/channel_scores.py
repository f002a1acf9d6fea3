"""Scoring channels with any criterion: tied channels packed into one mask entry; what a channel costs (3SP).

``pack`` stacks the output slices of every kernel that writes a group's channels
into one leaf, so a criterion's structured mask on it is one entry per group
channel and ``dL/dc`` is the sum over the tied writers (the chain rule).
``score_channels`` runs any registry criterion that way. ``channel_flops`` gives
the FLOPs per example each channel's removal saves (3SP's compute cost, the one
definition: ``score_channels`` passes it to any criterion taking ``channel_costs``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from chex import ArrayTree

from prospr_jax.channels import ChannelMask, ChannelPlan, Module, named_paths
from prospr_jax.criteria import scores as scores_lib, structured as structured_lib


def _writer_pieces(plan: ChannelPlan) -> dict[Module, list[tuple[str, tuple[int, ...]]]]:
  pieces: dict[Module, list[tuple[str, tuple[int, ...]]]] = {}
  for group in plan.groups:
    for slot in group.writers:
      pieces.setdefault(slot.module, []).append((group.name, slot.channels))
  return pieces


def pack(plan: ChannelPlan, params: ArrayTree) -> tuple[ArrayTree, Callable[[ArrayTree], ArrayTree]]:
  """``({'groups': {name: (rows, size)}, 'rest': params without the writers' kernels}, unpack)``, nested dicts.

  Each group's leaf stacks the output slices of all its writers' kernels, so a
  ``(size,)`` mask on it multiplies every tied writer at once and a criterion's
  ``dL/dc`` of that entry is the sum over the writers (the chain rule). A
  permutation of the parameters: SGD, momentum and weight decay act on it as on
  ``params``.
  """
  pieces = _writer_pieces(plan)
  kernels = {names[:-1]: leaf for names, leaf in named_paths(params) if names[-1] == 'kernel'}
  for module, owned in pieces.items():
    covered = np.sort(np.concatenate([np.asarray(c, int) for _, c in owned]))
    if module not in kernels or not np.array_equal(covered, np.arange(jnp.shape(kernels[module])[-1])):
      raise ValueError(f'{plan.architecture} plan does not cover every output channel of {"/".join(module)} once')
  groups = {}
  for group in plan.groups:
    rows = [jnp.take(kernels[s.module], np.asarray(s.channels, int), axis=-1).reshape(-1, group.size)
            for s in group.writers]
    groups[group.name] = jnp.concatenate(rows, axis=0) if len(rows) > 1 else rows[0]
  rest = _without_kernels(params, set(pieces))
  shapes = {module: jnp.shape(kernels[module]) for module in pieces}

  def unpack(packed: ArrayTree) -> ArrayTree:
    rebuilt = {}
    offsets = {name: 0 for name in packed['groups']}
    for group in plan.groups:
      for slot in group.writers:
        shape = shapes[slot.module][:-1] + (group.size,)
        rows = int(np.prod(shape[:-1]))
        block = packed['groups'][group.name][offsets[group.name]:offsets[group.name] + rows].reshape(shape)
        offsets[group.name] += rows
        rebuilt.setdefault(slot.module, []).append((slot.channels, block))
    kernels_out = {}
    for module, parts in rebuilt.items():
      order = np.argsort(np.concatenate([np.asarray(c, int) for c, _ in parts]))
      kernels_out[module] = jnp.take(jnp.concatenate([b for _, b in parts], axis=-1), order, axis=-1)
    return _with_kernels(packed['rest'], kernels_out)

  return {'groups': groups, 'rest': rest}, unpack


def _without_kernels(tree: Mapping[str, Any], modules: set[Module], prefix: Module = ()) -> dict[str, Any]:
  """A copy of a nested-dict params tree without the kernels of ``modules``."""
  return {key: _without_kernels(value, modules, (*prefix, key)) if isinstance(value, Mapping) else value
          for key, value in tree.items() if not (key == 'kernel' and prefix in modules)}


def _with_kernels(tree: Mapping[str, Any], kernels: dict[Module, Any], prefix: Module = ()) -> dict[str, Any]:
  """``_without_kernels`` undone: ``kernels[module]`` put back as ``module/kernel``."""
  out = {key: _with_kernels(value, kernels, (*prefix, key)) if isinstance(value, Mapping) else value
         for key, value in tree.items()}
  if prefix in kernels:
    out['kernel'] = kernels[prefix]
  return out


def channel_flops(plan: ChannelPlan, params: ArrayTree, positions: Mapping[str, float]) -> ChannelMask:
  """Per channel, the FLOPs per example its removal saves in the dense network: producing it and reading it.

  ``positions[name]``: output positions per example of the product that uses
  kernel ``name`` (``criteria.structured.kernel_positions``), e.g. H * W of a conv.
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
  """``channel_flops`` with each kernel's output positions read off ``loss_fn(params, batch)``'s jaxpr."""
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


def score_channels(criterion: Callable[..., ArrayTree], plan: ChannelPlan, params: ArrayTree, batches: Any, *,
                   loss_fn: Callable[[ArrayTree, Any], jax.Array] | None = None,
                   apply_fn: Callable[[ArrayTree, jax.Array], jax.Array] | None = None,
                   channel_costs: ChannelMask | None = None, **kwargs: Any) -> ChannelMask:
  """Channel scores ``{group name: (size,)}`` from any criterion of the registry, tied groups scored as one.

  The criterion sees the packed parameters (``pack``) with ``structured=True``
  and one mask entry per group channel; ``loss_fn`` and ``apply_fn`` see them unpacked.
  A criterion taking ``channel_costs`` (3SP) gets ``channel_flops`` of the first
  batch unless ``channel_costs`` is given.
  """
  if channel_costs is None and takes_channel_costs(criterion):
    if loss_fn is None:
      raise ValueError('this criterion divides by what each channel costs, read off the loss: pass loss_fn= '
                       '(or channel_costs=, e.g. channel_scores.channel_flops)')
    channel_costs = plan_flops(plan, params, loss_fn, scores_lib.batch_at(batches, 0))
  packed, unpack = pack(plan, params)
  if loss_fn is not None:
    kwargs['loss_fn'] = lambda p, batch: loss_fn(unpack(p), batch)
  if apply_fn is not None:
    kwargs['apply_fn'] = lambda p, x: apply_fn(unpack(p), x)
  if channel_costs is not None:  # mirrors the scores: costs on the groups, None on the rest
    kwargs['channel_costs'] = {'groups': {n: jnp.asarray(c) for n, c in channel_costs.items()},
                               'rest': jax.tree.map(lambda _: None, packed['rest'])}
  scores = criterion(packed, batches, structured=True, prunable=lambda path, leaf: path[0] == 'groups', **kwargs)
  return dict(scores['groups'])
