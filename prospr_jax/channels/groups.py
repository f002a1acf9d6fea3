"""Channel groups: what one entry of a structured mask removes, tied where a residual sum joins channels.

A ``ChannelPlan`` lists the groups of a network. A group's channels are written
by one kernel's output axis, or by several that add into the same residual
channels (tied: one mask entry removes the channel from all of them), carry
their convs' biases and the BatchNorms that follow (``norms``), and are read by
later kernels' input axes (``readers``; a Dense after a flatten reads each
channel at ``spatial`` rows). A channel mask is ``{group name: (size,) bool}``.

From it come the masks of every parameter of a channel (``expand``: kernel
slices, biases, BatchNorm scale and offset, so a dead channel outputs exactly 0
in train and eval mode) and the narrower variables (``compact_tree``); tied
channels are scored as one in ``channels/scores.py``. Plans of the model zoo:
``models/plans.py``. Pure jax and numpy: any params tree of nested dicts whose
kernels are named ``<module>/kernel``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from chex import ArrayTree

from prospr_jax import masks as masks_lib

Module = tuple[str, ...]
ChannelMask = dict[str, Any]


class Slot(NamedTuple):
  """Where a group's channels sit on a module's channel axis (output, or input for readers)."""
  module: Module
  channels: tuple[int, ...]
  spatial: int = 1  # readers: a Dense after a flatten reads channel c at rows s * C + c, s < spatial


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
  """Channels removed together: written by ``writers`` (tied when several), normalised by ``norms``, read by ``readers``."""
  name: str
  size: int
  writers: tuple[Slot, ...]
  norms: tuple[Slot, ...] = ()
  readers: tuple[Slot, ...] = ()
  may_empty: bool = False  # ResNet-20's zero-padded channels: removing all of them leaves the stream intact


@dataclasses.dataclass(frozen=True)
class ChannelPlan:
  architecture: str
  groups: tuple[ChannelGroup, ...]

  def names(self) -> tuple[str, ...]:
    return tuple(group.name for group in self.groups)


def ones(plan: ChannelPlan) -> ChannelMask:
  """The dense network's channel mask: every channel kept."""
  return {group.name: np.ones(group.size, bool) for group in plan.groups}


def check_mask(plan: ChannelPlan, mask: Mapping[str, Any]) -> ChannelMask:
  """``mask`` as ``{name: bool array}``; ValueError for another model's mask, a per-weight one, or an emptied layer."""
  if not isinstance(mask, Mapping):
    raise TypeError(f'a channel mask is a dict {{group name: (channels,) 0/1 array}}, got {type(mask).__name__}: '
                     'build it with prospr_jax.channel_plan(model, params) and a criterion with structured=True')
  mask = {name: np.asarray(m) for name, m in masks_lib.named_leaves(dict(mask))}
  if any(m.ndim > 1 for m in mask.values()):
    raise ValueError('this mask holds per-weight entries (arrays of kernel shape): compaction needs a channel mask, '
                     'one entry per channel (prune with structured=True; in a config, config.prune.structured=True)')
  wanted = {group.name: group.size for group in plan.groups}
  missing, extra = sorted(set(wanted) - set(mask)), sorted(set(mask) - set(wanted))
  wrong = sorted(n for n in set(wanted) & set(mask) if mask[n].shape != (wanted[n],))
  _check_tied(plan, extra)
  if missing or extra or wrong:
    details = '; '.join(part for part in (
        missing and f'missing {", ".join(missing)}', extra and f'unknown {", ".join(extra)}',
        wrong and 'wrong size ' + ', '.join(f'{n} {mask[n].shape} (want ({wanted[n]},))' for n in wrong)) if part)
    raise ValueError(f'this channel mask does not fit this {plan.architecture} (is it from another model?): {details}')
  not_binary = sorted(n for n, m in mask.items() if not np.isin(m, (0, 1)).all())
  if not_binary:
    raise ValueError(f'a channel mask holds only 0 and 1; {", ".join(not_binary)} hold other values (scores?)')
  emptied = [g.name for g in plan.groups if not g.may_empty and not mask[g.name].any()]
  if emptied:
    raise ValueError(f'the mask removes every channel of {", ".join(emptied)}, disconnecting the network: keep at '
                     'least one (config.prune.keep_one_per_layer=True)')
  return {group.name: mask[group.name].astype(bool) for group in plan.groups}


def tied_kernels(plan: ChannelPlan) -> dict[str, str]:
  """``{kernel name: its group's name}`` for every kernel that writes a tied group but does not name it."""
  return {'/'.join(slot.module + ('kernel',)): group.name for group in plan.groups if len(group.writers) > 1
          for slot in group.writers if '/'.join(slot.module + ('kernel',)) != group.name}


def _check_tied(plan: ChannelPlan, extra: list[str]) -> None:
  """ValueError naming the fix when a mask's unknown entries are kernels of tied groups: it scored them apart."""
  tied = tied_kernels(plan)
  if not extra or not set(extra) <= set(tied):
    return
  shown = ', '.join(f'{name} is tied into {tied[name]}' for name in extra[:3]) + (', ...' if len(extra) > 3 else '')
  raise ValueError(
      f'this is a per-kernel (untied) channel mask, one entry per output channel of each kernel, but in this '
      f'{plan.architecture} residual sums tie channels across kernels ({shown}), so one entry must remove a channel '
      'from all of them. Score the channels with prospr_jax.score_channels(criterion, '
      'prospr_jax.channel_plan(model, params), params, batches, loss_fn=...) and threshold those scores, or prune '
      'with prune.py and config.prune.structured=True')


def _module_and_leaf(names: tuple[str, ...]) -> tuple[Module, str]:
  return names[:-1], names[-1]


def named_paths(tree: ArrayTree) -> list[tuple[tuple[str, ...], Any]]:
  """(module path + leaf name as a tuple, leaf) for every leaf; ``masks.named_leaves`` joins the names with '/'."""
  return [(masks_lib.path_names(p), x) for p, x in jax.tree_util.tree_leaves_with_path(tree)]


def _axis_sizes(params: ArrayTree) -> tuple[dict[Module, int], dict[Module, int]]:
  """Output (last axis) and kernel input (axis -2) sizes of every module in ``params``."""
  outs, ins = {}, {}
  for names, leaf in named_paths(params):
    module, name = _module_and_leaf(names)
    outs[module] = jnp.shape(leaf)[-1]
    if name == 'kernel':
      ins[module] = jnp.shape(leaf)[-2]
  return outs, ins


def axis_keeps(plan: ChannelPlan, mask: ChannelMask, params: ArrayTree) -> tuple[dict[Module, np.ndarray], ...]:
  """Per module, which entries of its output axis and of its kernel's input axis the mask keeps."""
  outs, ins = _axis_sizes(params)
  keep_out: dict[Module, np.ndarray] = {}
  keep_in: dict[Module, np.ndarray] = {}
  for group in plan.groups:
    kept = np.asarray(mask[group.name], bool)
    for slot in group.writers + group.norms + group.readers:
      if slot.module not in outs:
        raise ValueError(f'the {plan.architecture} plan names {"/".join(slot.module)}, which these params lack: '
                         'is the mask or the plan from another model?')
    for slot in group.writers + group.norms:
      keep_out.setdefault(slot.module, np.ones(outs[slot.module], bool))[list(slot.channels)] &= kept
    for slot in group.readers:
      rows = keep_in.setdefault(slot.module, np.ones(ins[slot.module], bool))
      rows.reshape(slot.spatial, -1)[:, list(slot.channels)] &= kept
  return keep_out, keep_in


def _leaf_keeps(names, shape, keep_out, keep_in) -> list[tuple[int, np.ndarray]]:
  """``[(axis, keep)]`` of one leaf: its last axis if its module's outputs are masked, axis -2 for a read kernel."""
  module, name = _module_and_leaf(names)
  keeps = [(len(shape) - 1, keep_out[module])] if module in keep_out else []
  if name == 'kernel' and module in keep_in:
    keeps.append((len(shape) - 2, keep_in[module]))
  return keeps


def _params_of(variables: ArrayTree) -> ArrayTree:
  return variables['params'] if isinstance(variables, Mapping) and 'params' in variables else variables


def _map_modules(fn, variables: ArrayTree, *others: ArrayTree) -> ArrayTree:
  """``fn(module names, leaf, *other leaves)`` over a params tree, or a variables dict (collections stripped)."""
  collections = isinstance(variables, Mapping) and 'params' in variables
  def leaf_fn(path, *leaves):
    names = masks_lib.path_names(path)
    return fn(names[1:] if collections else names, *leaves)
  return jax.tree_util.tree_map_with_path(leaf_fn, variables, *others)


def expand(plan: ChannelPlan, mask: ChannelMask, params: ArrayTree) -> ArrayTree:
  """The mask of every parameter a channel owns, mirroring ``params`` (``None`` where nothing is removed)."""
  keep_out, keep_in = axis_keeps(plan, check_mask(plan, mask), params)

  def leaf_mask(names, leaf):
    shape = jnp.shape(leaf)
    keeps = _leaf_keeps(names, shape, keep_out, keep_in)
    if not keeps:
      return None
    full = np.ones(shape, bool)
    for axis, keep in keeps:
      full &= np.expand_dims(keep, tuple(range(1, len(shape) - axis)))
    return jnp.asarray(full)

  return _map_modules(leaf_mask, params)


def kernel_mask(plan: ChannelPlan, mask: ChannelMask, params: ArrayTree) -> ArrayTree:
  """``expand`` on the kernels only (``None`` elsewhere): every kernel entry the kept channels own, readers' rows
  included, which is what the compact network keeps of the weights."""
  full = expand(plan, mask, params)
  return jax.tree.map(lambda m, p: m if m is not None and jnp.ndim(p) > 1 else None, full, params,
                      is_leaf=masks_lib.is_none)


def compact_tree(plan: ChannelPlan, mask: ChannelMask, variables: ArrayTree) -> ArrayTree:
  """Every leaf of ``variables`` (params and BatchNorm statistics alike) with the removed channels dropped."""
  keep_out, keep_in = axis_keeps(plan, check_mask(plan, mask), _params_of(variables))

  def take(names, leaf):
    keeps = _leaf_keeps(names, jnp.shape(leaf), keep_out, keep_in)
    if not keeps:
      return leaf
    index = [np.arange(n) for n in jnp.shape(leaf)]
    for axis, keep in keeps:
      index[axis] = np.flatnonzero(keep)
    return jnp.asarray(np.asarray(leaf)[np.ix_(*index)])  # on the host: one copy, no dispatch per axis

  return _map_modules(take, variables)


def embed(plan: ChannelPlan, mask: ChannelMask, compact: ArrayTree, dense: ArrayTree) -> ArrayTree:
  """The inverse of ``compact_tree``: ``dense`` with its kept entries replaced by ``compact``'s."""
  keep_out, keep_in = axis_keeps(plan, check_mask(plan, mask), _params_of(dense))

  def put(names, big, small):
    index = [np.arange(n) for n in jnp.shape(big)]
    for axis, keep in _leaf_keeps(names, jnp.shape(big), keep_out, keep_in):
      index[axis] = np.flatnonzero(keep)
    return jnp.asarray(big).at[np.ix_(*index)].set(small)

  return _map_modules(put, dense, compact)
