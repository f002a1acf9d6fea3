"""Channel plans of the model zoo: which channels one structured-mask entry removes, and the narrower widths.

- VGG, the small CNN, the LeNets: one free group per conv or hidden Dense (no
  ties); the classifier's outputs are never pruned.
- ResNet-18/34/50: every residual stream (one per stage) is one tied group,
  written by the stage's blocks' last convs, its projection shortcut conv (and,
  for basic blocks, the stem, whose output is stage 1's stream); each block's
  inner convs are free groups. The bottleneck nets' stem is a free group.
- ResNet-20: the option-A shortcut carries stream channel c into channel
  ``low + c`` of the next stage, so a channel is tied to the channels it flows
  into: one group of "lanes" born in stage 1 (stem + blocks 1-3, and their
  continuation in stages 2 and 3), one of the channels stage 2 adds (its
  shortcut's zero padding, below and above the lanes) and one of stage 3's.
  Removing all of a padding group is allowed: the compact net's shortcut pads
  fewer zeros (``shortcut_pads``). Each block's first conv is a free group.

A group is named after its first writer's kernel (``'Conv_0/kernel'``), so the
plans of VGG and the small CNN name the same entries as a per-kernel channel mask.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from chex import ArrayTree

from prospr_jax.channels.groups import ChannelGroup, ChannelPlan, Slot
from prospr_jax.models.lenet import LeNet5, LeNet300100
from prospr_jax.models.resnet import ResNet, ResNet20
from prospr_jax.models.small_cnn import SmallCNN
from prospr_jax.models.vgg import VGG

Mask = dict[str, np.ndarray]


def _kept(mask: Mask, name: str) -> int:
  return int(np.sum(mask[name])) if name in mask else 0


def _span(start: int, size: int) -> tuple[int, ...]:
  return tuple(range(start, start + size))


def _out_size(params: ArrayTree, module: str) -> int:
  node = params
  for name in module.split('/'):
    node = node[name]
  return int(np.shape(node['kernel'])[-1])


def _chain(params: ArrayTree, writers: list[str], norms: list[str | None], head: str,
           spatial: Callable[[int], int] = lambda i: 1) -> tuple[ChannelGroup, ...]:
  """Free groups of a plain stack: layer i is read by layer i + 1 (the last by ``head``)."""
  readers = writers[1:] + [head]
  groups = []
  for i, (writer, norm, reader) in enumerate(zip(writers, norms, readers)):
    size = _out_size(params, writer)
    channels = _span(0, size)
    groups.append(ChannelGroup(
        f'{writer}/kernel', size, (Slot(tuple(writer.split('/')), channels),),
        (Slot((norm,), channels),) if norm else (), (Slot(tuple(reader.split('/')), channels, spatial(i)),)))
  return tuple(groups)


def _vgg(model: VGG, params: ArrayTree):
  convs = len(model.conv_widths())
  writers = [f'Conv_{i}' for i in range(convs)] + (['Dense_0', 'Dense_1'] if model.imagenet_head else [])
  norms = [f'BatchNorm_{i}' for i in range(convs)] + ([None, None] if model.imagenet_head else [])
  head = 'Dense_2' if model.imagenet_head else 'Dense_0'
  spatial = lambda i: 49 if model.imagenet_head and i == convs - 1 else 1  # the 7x7 map, flattened
  groups = _chain(params, writers, norms, head, spatial)

  def widths(mask: Mask) -> dict[str, Any]:
    sizes = [_kept(mask, g.name) for g in groups]
    return {'widths': tuple(sizes[:convs]), **({'hidden': tuple(sizes[convs:])} if model.imagenet_head else {})}
  return groups, widths


def _small_cnn(model: SmallCNN, params: ArrayTree):
  groups = _chain(params, ['Conv_0', 'Conv_1'], ['BatchNorm_0', 'BatchNorm_1'], 'Dense_0')
  return groups, lambda mask: {'widths': tuple(_kept(mask, g.name) for g in groups)}


def _lenet5(model: LeNet5, params: ArrayTree):
  flat = np.shape(params['Dense_0']['kernel'])[0] // _out_size(params, 'Conv_1')
  groups = _chain(params, ['Conv_0', 'Conv_1', 'Dense_0'], [None] * 3, 'Dense_1', lambda i: flat if i == 1 else 1)
  return groups, lambda mask: {'widths': tuple(_kept(mask, g.name) for g in groups)}


def _lenet300(model: LeNet300100, params: ArrayTree):
  groups = _chain(params, ['Dense_0', 'Dense_1'], [None, None], 'Dense_2')
  return groups, lambda mask: {'widths': tuple(_kept(mask, g.name) for g in groups)}


def _resnet20(model: ResNet20, params: ArrayTree):
  stages, inner = model.widths()
  pads = model.shortcut_pads or tuple(((b - a) // 2, b - a - (b - a) // 2) for a, b in itertools.pairwise(stages))
  block = lambda b, conv: (f'OptionABlock_{b}', conv)
  writers = {0: [('Conv_0',)] + [block(b, 'Conv_1') for b in range(3)]}
  norms = {0: [('BatchNorm_0',)] + [block(b, 'BatchNorm_1') for b in range(3)]}
  readers = {0: [block(b, 'Conv_0') for b in range(4)]}
  for s in (1, 2):
    writers[s] = [block(b, 'Conv_1') for b in range(3 * s, 3 * s + 3)]
    norms[s] = [block(b, 'BatchNorm_1') for b in range(3 * s, 3 * s + 3)]
    readers[s] = [block(b, 'Conv_0') for b in range(3 * s + 1, 3 * s + 4 if s == 1 else 3 * s + 3)]
  readers[2].append(('Dense_0',))

  def lane_group(name, born, channels):
    """Channels born in stage ``born`` at ``channels``, followed through the later stages' shortcuts."""
    w, n, r = [], [], []
    for s in range(born, 3):
      w += [Slot(m, channels) for m in writers[s]]
      n += [Slot(m, channels) for m in norms[s]]
      r += [Slot(m, channels) for m in readers[s]]
      if s < 2:
        channels = tuple(c + pads[s][0] for c in channels)
    return ChannelGroup(name, len(channels), tuple(w), tuple(n), tuple(r), may_empty=born > 0)

  groups = [lane_group('Conv_0/kernel', 0, _span(0, stages[0]))]
  for s in (1, 2):
    low, high = pads[s - 1]
    born = _span(0, low) + _span(low + stages[s - 1], high)
    if born:
      groups.append(lane_group(f'OptionABlock_{3 * s}/Conv_1/kernel', s, born))
  for b in range(9):
    channels = _span(0, inner[b])
    groups.append(ChannelGroup(f'OptionABlock_{b}/Conv_0/kernel', inner[b], (Slot(block(b, 'Conv_0'), channels),),
                               (Slot(block(b, 'BatchNorm_0'), channels),), (Slot(block(b, 'Conv_1'), channels),)))

  def widths(mask: Mask) -> dict[str, Any]:
    def kept_pads(s):  # the stage's own channels: the low padding first, then the high
      name = f'OptionABlock_{3 * s}/Conv_1/kernel'
      low = int(np.sum(mask[name][:pads[s - 1][0]])) if name in mask else 0
      return low, _kept(mask, name) - low
    new_pads = (kept_pads(1), kept_pads(2))
    w0 = _kept(mask, 'Conv_0/kernel')
    w1 = w0 + sum(new_pads[0])
    return {'stage_widths': (w0, w1, w1 + sum(new_pads[1])), 'shortcut_pads': new_pads,
            'block_widths': tuple(_kept(mask, f'OptionABlock_{b}/Conv_0/kernel') for b in range(9))}
  return tuple(groups), widths


def _resnet(model: ResNet, params: ArrayTree):
  stem, stages, inner = model.widths()
  kind = model.block.__name__
  bottleneck = model.block.expansion != 1
  last, projection = ('Conv_2', 'Conv_3') if bottleneck else ('Conv_1', 'Conv_2')
  blocks = [(s, i) for s, n in enumerate(model.stage_sizes) for i in range(n)]
  name = lambda b, m: (f'{kind}_{b}', m)
  groups, stage_names = [], []
  if bottleneck:
    groups.append(ChannelGroup('Conv_0/kernel', stem, (Slot(('Conv_0',), _span(0, stem)),),
                               (Slot(('BatchNorm_0',), _span(0, stem)),),
                               (Slot(name(0, 'Conv_0'), _span(0, stem)), Slot(name(0, projection), _span(0, stem)))))
  for stage, size in enumerate(stages):
    channels = _span(0, size)
    mine = [b for b, (s, _) in enumerate(blocks) if s == stage]
    writers, norms = ([('Conv_0',)], [('BatchNorm_0',)]) if stage == 0 and not bottleneck else ([], [])
    if stage > 0 or bottleneck:
      writers.append(name(mine[0], projection))
      norms.append(name(mine[0], f'BatchNorm_{projection[-1]}'))
    writers += [name(b, last) for b in mine]
    norms += [name(b, f'BatchNorm_{last[-1]}') for b in mine]
    readers = [name(b, 'Conv_0') for b in mine[1:]] + ([name(0, 'Conv_0')] if stage == 0 and not bottleneck else [])
    following = mine[-1] + 1
    readers += [name(following, 'Conv_0'), name(following, projection)] if following < len(blocks) else [('Dense_0',)]
    stage_names.append('/'.join(writers[0]) + '/kernel')
    groups.append(ChannelGroup(stage_names[-1], size, *(tuple(Slot(m, channels) for m in modules)
                                                        for modules in (writers, norms, readers))))
  for b, widths in enumerate(inner):
    for j, size in enumerate(widths):
      channels = _span(0, size)
      groups.append(ChannelGroup(f'{kind}_{b}/Conv_{j}/kernel', size, (Slot(name(b, f'Conv_{j}'), channels),),
                                 (Slot(name(b, f'BatchNorm_{j}'), channels),), (Slot(name(b, f'Conv_{j + 1}'), channels),)))

  def widths(mask: Mask) -> dict[str, Any]:
    return {**({'stem_width': _kept(mask, 'Conv_0/kernel')} if bottleneck else {}),
            'stage_widths': tuple(_kept(mask, n) for n in stage_names),
            'block_widths': tuple(tuple(_kept(mask, f'{kind}_{b}/Conv_{j}/kernel') for j in range(len(w)))
                                  for b, w in enumerate(inner))}
  return tuple(groups), widths


PLANS: dict[type, Callable[[Any, ArrayTree], tuple[tuple[ChannelGroup, ...], Callable[[Mask], dict]]]] = {
    VGG: _vgg, SmallCNN: _small_cnn, LeNet5: _lenet5, LeNet300100: _lenet300, ResNet20: _resnet20, ResNet: _resnet,
}


def _builder(model: nn.Module):
  if type(model) not in PLANS:
    raise ValueError(f'structured pruning and compaction do not know the architecture {type(model).__name__}; they '
                     f'know {", ".join(sorted(t.__name__ for t in PLANS))} (prospr_jax/models/plans.py)')
  return PLANS[type(model)]


def channel_plan(model: nn.Module, params: ArrayTree) -> ChannelPlan:
  """The channel groups of ``model`` (a zoo model: VGG, ResNet, ResNet20, SmallCNN, LeNets) with ``params``."""
  groups, _ = _builder(model)(model, params)
  return ChannelPlan(type(model).__name__, groups)


def narrowed(model: nn.Module, params: ArrayTree, mask: dict[str, Any]) -> nn.Module:
  """The same family with the widths the (checked) channel ``mask`` keeps."""
  _, widths = _builder(model)(model, params)
  return model.clone(**widths({name: np.asarray(m, bool) for name, m in mask.items()}))


def width_fields(model: nn.Module) -> dict[str, Any]:
  """The width fields a narrowed model sets, as they are on ``model``: what rebuilds it by name."""
  probe = {VGG: ('widths', 'hidden'), SmallCNN: ('widths',), LeNet5: ('widths',), LeNet300100: ('widths',),
           ResNet20: ('stage_widths', 'block_widths', 'shortcut_pads'),
           ResNet: ('stem_width', 'stage_widths', 'block_widths')}[type(model)]
  return {field: getattr(model, field) for field in probe if getattr(model, field) is not None}


def abstract_variables(model: nn.Module, input_shape: tuple[int, ...]) -> ArrayTree:
  """Shapes and dtypes of ``model``'s variables for one input of ``input_shape``, without computing them."""
  return jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, *input_shape), np.float32), train=False))
