"""The network a run trains after pruning: masked at full width, or compact; and the weights it starts from.

A weight mask trains the full network with the mask. A channel mask
(``config.prune.structured``) is expanded to every parameter of each channel
(``channels.expand``: kernel slices, biases, BatchNorm scale and offset) and,
with ``config.prune.compact`` (the default), becomes the compact network
(``compaction.compact``), trained dense from the same initial weights. The
workdir then holds ``compact.json`` and ``compact_variables.msgpack`` (the
weights training starts from; ``compaction.load_compact`` rebuilds it),
``compaction.json``, the cost of the dense network against the compact one, and
once training ends ``compact_variables_trained.msgpack`` (``export_trained``;
``load_compact(workdir, trained=True)``).
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import TYPE_CHECKING, Any

import jax
import ml_collections
import numpy as np
from chex import ArrayTree

from prospr_jax import (
  ablations,
  channels,
  checkpointing,
  compaction,
  cost,
  files,
  initialization,
  masks as masks_lib,
  models,
  seeds,
  sharding,
  trainer,
)
from prospr_jax.criteria import registry
from prospr_jax.models import plans
from prospr_jax.sparsity import SparsityReport, sparsity_report

if TYPE_CHECKING:
  from prospr_jax.experiment import Setup

log = logging.getLogger(__name__)
COST_FILE = 'compaction.json'


def plan_of(setup: Setup) -> channels.ChannelPlan:
  return plans.channel_plan(setup.model, setup.variables['params'])


def load_mask(config: ml_collections.ConfigDict, setup: Setup, path: str | pathlib.Path) -> ArrayTree:
  """A saved mask: a channel mask checked against the model's plan, or a weight mask against its params."""
  if not config.prune.structured:
    return masks_lib.load_masks(path, setup.variables['params'])
  return channels.check_mask(plan_of(setup), masks_lib.read_npz(path))


def weight_mask(config: ml_collections.ConfigDict, setup: Setup, mask: ArrayTree) -> ArrayTree:
  """The mask of every parameter: a weight mask as it is, a channel mask expanded to its channels' parameters."""
  if not config.prune.structured:
    return mask
  return channels.expand(plan_of(setup), mask, setup.variables['params'])


def reports(config: ml_collections.ConfigDict, setup: Setup, mask: ArrayTree) -> tuple[SparsityReport, SparsityReport]:
  """``(mask report, weight report)``: per layer the kept entries (channels, when structured) and the kept weights."""
  return mask_reports(setup.model, setup.variables['params'], mask, config.prune.structured)


def mask_reports(model, params: ArrayTree, mask: ArrayTree, structured: bool) -> tuple[SparsityReport, SparsityReport]:
  """As ``reports``; a channel mask's weight report counts every kernel entry its channels own (readers too)."""
  if not structured:
    report = sparsity_report(mask, params)
    return report, report
  kernels = channels.kernel_mask(plans.channel_plan(model, params), mask, params)
  return sparsity_report(mask), sparsity_report(kernels, params)


def starting_variables(config: ml_collections.ConfigDict, setup: Setup, mask: ArrayTree) -> ArrayTree:
  """The full-width variables the pruned network starts from: the init, or the ablation's / criterion's variant."""
  full = weight_mask(config, setup, mask)
  variables = setup.variables
  if config.ablation == 'reinit':
    fresh = models.init_variables(setup.model, setup.info.input_shape, seeds.reinit_ablation(config.seed))
    variables = {**variables, 'params': ablations.reinitialize(variables['params'], full, fresh['params'])}
  how = initialization.check_initialization(registry.get_criterion(config.criterion).initialization)
  if how == 'rescale':
    variables = {**variables, 'params': initialization.rescale_kernels(variables['params'], full)}
  elif how == 'reinit' and config.prune.structured:  # the compact network's own initialiser, at full width
    narrow = plans.narrowed(setup.model, variables['params'], mask)
    fresh = models.init_variables(narrow, setup.info.input_shape, seeds.criterion_reinit(config.seed))
    variables = channels.embed(plan_of(setup), mask, fresh, variables)
  elif how == 'reinit':
    fresh = models.init_variables(setup.model, setup.info.input_shape, seeds.criterion_reinit(config.seed))
    variables = {**variables, 'params': ablations.reinitialize(variables['params'], full, fresh['params'])}
  return variables


def build(config: ml_collections.ConfigDict, setup: Setup, mask: ArrayTree,
          workdir: pathlib.Path) -> tuple[Setup, ArrayTree]:
  """``(setup of the network to train, its mask)``: compact (mask all ones) or full width with the weight mask."""
  variables = starting_variables(config, setup, mask)
  if not (config.prune.structured and config.prune.compact):
    return dataclasses.replace(setup, variables=variables), weight_mask(config, setup, mask)
  narrow, small = compaction.compact(setup.model, variables, mask)
  compaction.check_shapes(narrow, small, setup.info.input_shape)
  compact_setup = dataclasses.replace(setup, model=narrow, variables=small)
  ones = masks_lib.all_ones_mask(small['params'])
  if jax.process_index() == 0 and not all((workdir / name).exists()
                                         for name in (compaction.COMPACT_FILE, compaction.VARIABLES_FILE)):
    compaction.save_compact(workdir, config.model, setup.info.num_classes, config.model_kwargs.to_dict(), narrow,
                            small, widths=channel_counts(mask), input_shape=list(setup.info.input_shape))
  if jax.process_index() == 0 and not (workdir / COST_FILE).exists():
    write_costs(config, setup, compact_setup, ones, workdir)
  log.info('Training the compact network: %s', plans.width_fields(narrow))
  return compact_setup, ones


def export_trained(config: ml_collections.ConfigDict, compact_setup: Setup, mask: ArrayTree, train_dir: pathlib.Path,
                   workdir: pathlib.Path) -> None:
  """Write the compact network's trained variables (newest checkpoint in ``train_dir``) next to ``compact.json``."""
  if not (config.prune.structured and config.prune.compact):
    return
  checkpointer = checkpointing.Checkpointer(train_dir / 'checkpoints')
  try:
    initial = sharding.replicate(compact_setup.variables['params'], compact_setup.mesh)
    state, _, _ = checkpointer.restore(trainer.initial_state(config, compact_setup, mask), initial)
  finally:
    checkpointer.close()
  trained = {**compact_setup.variables, 'params': state.params}
  if 'batch_stats' in trained:
    trained['batch_stats'] = state.batch_stats
  trained = sharding.host_value(trained)
  if jax.process_index() == 0:
    compaction.save_trained(workdir, trained)


def channel_counts(mask: ArrayTree) -> dict[str, list[int]]:
  """Per group, ``[kept, total]`` channels."""
  return {name: [int(np.sum(m)), int(np.size(m))] for name, m in masks_lib.named_leaves(mask)}


def write_costs(config: ml_collections.ConfigDict, setup: Setup, compact_setup: Setup, ones: ArrayTree,
                workdir: pathlib.Path) -> dict[str, Any]:
  """Measure the dense and the compact network side by side; write ``compaction.json`` and log the table."""
  costs = cost.compare_costs(
      {'dense': (setup.model, setup.variables, masks_lib.all_ones_mask(setup.variables['params'])),
       'compact': (compact_setup.model, compact_setup.variables, ones)},
      input_shape=setup.info.input_shape, num_classes=setup.info.num_classes, batch_size=config.batch_size,
      eval_batch_size=config.eval_batch_size)
  files.write_json(workdir / COST_FILE, {**costs, 'device': jax.devices()[0].device_kind,
                                         'batch_size': config.batch_size, 'eval_batch_size': config.eval_batch_size})
  table = cost.comparison_table(costs)
  log.info('Dense against compact (%s):\n%s', jax.devices()[0].device_kind, table)
  return costs
