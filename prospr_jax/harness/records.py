"""The config resolved once into small frozen records: what to prune, how to score it, how to train, how to run.

A driver (``experiment``, the sweep's references) resolves a validated
``ConfigDict`` at its start; the functions below it take the record, or the
one field, they read.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any

import ml_collections


@dataclasses.dataclass(frozen=True)
class PruneSpec:
  """What to prune: the criterion, how much, how the budget splits, the mask's form."""
  criterion: str
  sparsity: float
  distribution: str
  ablation: str
  structured: bool
  compact: bool
  structured_target: str
  keep_one_per_layer: bool

  @classmethod
  def of(cls, config: ml_collections.ConfigDict) -> PruneSpec:
    prune = config.prune
    return cls(config.criterion, prune.sparsity, config.distribution, config.ablation, prune.structured,
               prune.compact, prune.get('structured_target', 'channels'), prune.keep_one_per_layer)

  @property
  def compacts(self) -> bool:
    """A structured run that trains the compact (narrower) network, not the masked one."""
    return self.structured and self.compact

  @property
  def target(self) -> str:
    """What the sparsity counts: ``weights``, or with a channel mask ``channels`` (or the kept channels' weights)."""
    return self.structured_target if self.structured else 'weights'


@dataclasses.dataclass(frozen=True)
class Scoring:
  """How a mask is scored: the criterion with its ``config.prune`` settings (each criterion reads its own keys,
  ``criteria/registry.py``), the batches it reads, and the arithmetic it runs in."""
  criterion: str
  settings: Mapping[str, Any] = dataclasses.field(hash=False)  # config.prune, read-only
  invert: bool  # config.ablation == 'invert': the scores are negated before the top-k
  seed: int
  worker_count: int

  @classmethod
  def of(cls, config: ml_collections.ConfigDict) -> Scoring:
    return cls(config.criterion, types.MappingProxyType(config.prune.to_dict()), config.ablation == 'invert',
               config.seed, config.worker_count)

  def with_settings(self, **settings: Any) -> Scoring:
    """The same scoring with some of its ``config.prune`` settings changed (e.g. a more exact ``precision``)."""
    if unknown := sorted(set(settings) - set(self.settings)):
      raise KeyError(f'{", ".join(unknown)} not among the config.prune settings ({", ".join(sorted(self.settings))})')
    return dataclasses.replace(self, settings=types.MappingProxyType({**self.settings, **settings}))

  num_steps = property(lambda self: self.settings['num_steps'], doc='M, the inner steps (M + 1 batches)')
  batch_size = property(lambda self: self.settings['batch_size'], doc='the batch of each pruning batch')
  precision = property(lambda self: self.settings['precision'], doc='float32, float64 or highest')
  conv_impl = property(lambda self: self.settings['conv_impl'], doc="the scoring's convolution ('': the training one)")
  streamed = property(lambda self: self.settings['streamed'], doc='first-order ProsPr over a stream of batches')


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How a network trains: epochs, batches, the optimizer and its learning-rate schedule."""
  num_epochs: int
  batch_size: int
  eval_batch_size: int
  learning_rate: float
  momentum: float
  weight_decay: float
  lr_milestones: tuple[int, ...]
  lr_decay: float

  @classmethod
  def of(cls, config: ml_collections.ConfigDict) -> Recipe:
    return cls(config.num_epochs, config.batch_size, config.eval_batch_size, config.learning_rate, config.momentum,
               config.weight_decay, tuple(config.lr_milestones), config.lr_decay)


@dataclasses.dataclass(frozen=True)
class Running:
  """How a run runs: its seed (every random stream derives from it), data workers, checkpoint cadence, its label,
  where the data live (``data.resident`` on the device) and how many train steps one dispatch runs."""
  seed: int
  worker_count: int
  checkpoint_every_steps: int
  label: str  # '<model> on <dataset>', for plot titles
  data_on_device: bool = False
  steps_per_dispatch: int = 1

  @classmethod
  def of(cls, config: ml_collections.ConfigDict) -> Running:
    return cls(config.seed, config.worker_count, config.checkpoint_every_steps or 0,
               f'{config.model} on {config.dataset}', config.get('data_on_device', False),
               config.get('steps_per_dispatch', 1))
