"""Refuse a config that cannot work before any data is read or anything compiles; the message names the fix."""

from __future__ import annotations

from collections.abc import Collection

import ml_collections

from prospr_jax import ablations, data, distributions, precision, topk
from prospr_jax.channels import target as structured_target
from prospr_jax.criteria import registry
from prospr_jax.data import resident
from prospr_jax.models import MODELS
from prospr_jax.runtime import sharding
from prospr_jax.xla_cpu import conv_impl


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field and the fix."""


def _check_name(config: ml_collections.ConfigDict, field: str, valid: Collection[str]) -> None:
  if config[field] not in valid:
    raise ConfigError(f'config.{field}={config[field]!r}: valid names are {", ".join(sorted(valid))}')


def validate_config(config: ml_collections.ConfigDict, criteria: Collection[str] = tuple(registry.CRITERIA)) -> None:
  """Every name known, every count in range, every batch splittable over the devices. ``criteria``: the names
  ``config.criterion`` may take (the registry's; the sweep's after-training references pass theirs)."""
  for field, valid in (('dataset', data.DATASETS), ('model', MODELS), ('criterion', criteria),
                       ('distribution', distributions.DISTRIBUTIONS), ('ablation', ablations.ABLATIONS)):
    _check_name(config, field, valid)
  checks = [
      (config.num_epochs >= 0, f'config.num_epochs must be >= 0, got {config.num_epochs}'),
      (config.prune.num_steps >= 0, f'config.prune.num_steps (M) must be >= 0, got {config.prune.num_steps}'),
      (all(isinstance(m, int) and not isinstance(m, bool) and m >= 0 for m in config.lr_milestones),
       f'config.lr_milestones must be epochs (ints >= 0), got {config.lr_milestones!r}'),
      (config.prune.inner_lr > 0, f'config.prune.inner_lr must be positive, got {config.prune.inner_lr}'),
      (not config.prune.streamed or (config.criterion == 'prospr' and config.prune.first_order),
       'config.prune.streamed needs config.criterion="prospr" and config.prune.first_order=True'),
      (config.prune.structured or config.criterion not in registry.CRITERIA
       or not registry.get_criterion(config.criterion).structured_only,
       (f'config.criterion={config.criterion!r} prunes channels, not single weights: set '
        f'config.prune.structured=True, or choose one of {", ".join(registry.UNSTRUCTURED)}')),
      (config.prune.structured_target in structured_target.TARGETS,
       f'config.prune.structured_target={config.prune.structured_target!r}: valid values are '
       f'{", ".join(structured_target.TARGETS)}'),
      (config.prune.structured or config.prune.structured_target == 'channels',
       "config.prune.structured_target='weights' counts the weights of kept channels: set "
       'config.prune.structured=True (unstructured sparsity already counts weights)'),
      (config.get('steps_per_dispatch', 1) >= 1,
       f'config.steps_per_dispatch must be >= 1, got {config.get("steps_per_dispatch", 1)}'),
      (config.get('steps_per_dispatch', 1) == 1 or config.get('data_on_device', False),
       'config.steps_per_dispatch > 1 runs several steps on a device-resident set: set config.data_on_device=True'),
      (not (held := resident.unsupported(data.get_dataset_info(config.dataset))
                               if config.get('data_on_device', False) else ''),
       f'config.data_on_device=True cannot hold {config.dataset} on the device: {held}. Set '
       'config.data_on_device=False'),
  ]
  for ok, message in checks:
    if not ok:
      raise ConfigError(message)
  check_milestones(config.lr_milestones, config.num_epochs)
  for field, spec in (('conv_impl', config.conv_impl), ('prune.conv_impl', config.prune.conv_impl or 'auto')):
    try:
      conv_impl.parse_conv_impl(spec)
    except ValueError as error:
      raise ConfigError(f'config.{field}: {error}' + (' ("" for config.conv_impl\'s)' if field != 'conv_impl' else '')) from None
  try:
    precision.check_precision(config.prune.precision)
  except ValueError as error:
    raise ConfigError(f'config.prune.{error}') from None
  try:
    topk.check_sparsity(config.prune.sparsity)
  except ValueError as error:
    raise ConfigError(f'config.prune.{error}') from None
  for name, value in (('batch_size', config.batch_size), ('eval_batch_size', config.eval_batch_size),
                      ('prune.batch_size', config.prune.batch_size)):
    try:
      sharding.local_batch_size(value)
    except ValueError as error:
      raise ConfigError(f'config.{name}={value}: {error}') from None


def check_milestones(milestones: Collection[int], num_epochs: int) -> None:
  """Refuse a learning-rate drop after the last epoch (it would never happen); 0 epochs train nothing."""
  late = [m for m in milestones if m >= num_epochs]
  if num_epochs and late:
    raise ConfigError(f'config.lr_milestones={tuple(milestones)} drops the learning rate after epoch '
                      f'{", ".join(map(str, late))}, but training stops after config.num_epochs={num_epochs}: set '
                      f'--config.lr_milestones below {num_epochs} too (\'--config.lr_milestones=()\' for none), or '
                      'use a variant that sets both (configs/fashion_mnist_*.py:<epochs>)')
