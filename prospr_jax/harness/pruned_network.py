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
from typing import Any

import jax
import ml_collections
import numpy as np
from chex import ArrayTree

from prospr_jax import ablations, files, initialization, mask_files, masks as masks_lib, models
from prospr_jax.channels import groups
from prospr_jax.criteria import registry
from prospr_jax.harness import cost, seeds
from prospr_jax.harness.records import Recipe
from prospr_jax.harness.setup import Setup
from prospr_jax.models import compaction, plans

log = logging.getLogger(__name__)


def plan_of(setup: Setup) -> groups.ChannelPlan:
  return plans.channel_plan(setup.model, setup.variables['params'])


def load_mask(structured: bool, setup: Setup, path: str | pathlib.Path) -> ArrayTree:
  """A saved mask: a channel mask checked against the model's plan, or a weight mask against its params."""
  if not structured:
    return mask_files.load_masks(path, setup.variables['params'])
  return groups.check_mask(plan_of(setup), mask_files.read_npz(path))


def weight_mask(structured: bool, setup: Setup, mask: ArrayTree) -> ArrayTree:
  """The mask of every parameter: a weight mask as it is, a channel mask expanded to its channels' parameters."""
  if not structured:
    return mask
  return groups.expand(plan_of(setup), mask, setup.variables['params'])


def starting_variables(config: ml_collections.ConfigDict, setup: Setup, mask: ArrayTree) -> ArrayTree:
  """The full-width variables the pruned network starts from: the init, or the ablation's / criterion's variant."""
  full = weight_mask(config.prune.structured, setup, mask)
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
    variables = groups.embed(plan_of(setup), mask, fresh, variables)
  elif how == 'reinit':
    fresh = models.init_variables(setup.model, setup.info.input_shape, seeds.criterion_reinit(config.seed))
    variables = {**variables, 'params': ablations.reinitialize(variables['params'], full, fresh['params'])}
  return variables


def network_to_train(config: ml_collections.ConfigDict, setup: Setup, mask: ArrayTree,
                     workdir: pathlib.Path) -> tuple[Setup, ArrayTree]:
  """``(setup of the network to train, its mask)``: compact (mask all ones) or full width with the weight mask."""
  variables = starting_variables(config, setup, mask)
  if not (config.prune.structured and config.prune.compact):
    return dataclasses.replace(setup, variables=variables), weight_mask(config.prune.structured, setup, mask)
  narrow, small = compaction.compact(setup.model, variables, mask)
  compaction.check_shapes(narrow, small, setup.info.input_shape)
  compact_setup = dataclasses.replace(setup, model=narrow, variables=small)
  ones = masks_lib.all_ones_mask(small['params'])
  if jax.process_index() == 0 and not all((workdir / name).exists()
                                         for name in (compaction.COMPACT_FILE, compaction.VARIABLES_FILE)):
    compaction.save_compact(workdir, config.model, setup.info.num_classes, config.model_kwargs.to_dict(), narrow,
                            small, widths=channel_counts(mask), input_shape=list(setup.info.input_shape))
  if jax.process_index() == 0 and not (workdir / cost.COST_FILE).exists():
    write_costs(Recipe.of(config), setup, compact_setup, ones, workdir)
  log.info('Training the compact network: %s', plans.width_fields(narrow))
  return compact_setup, ones


def channel_counts(mask: ArrayTree) -> dict[str, list[int]]:
  """Per group, ``[kept, total]`` channels."""
  return {name: [int(np.sum(m)), int(np.size(m))] for name, m in masks_lib.named_leaves(mask)}


def write_costs(recipe: Recipe, setup: Setup, compact_setup: Setup, ones: ArrayTree,
                workdir: pathlib.Path) -> dict[str, Any]:
  """Measure the dense and the compact network side by side; write ``compaction.json`` and log the table."""
  costs = cost.compare_costs(
      {'dense': (setup.model, setup.variables, masks_lib.all_ones_mask(setup.variables['params'])),
       'compact': (compact_setup.model, compact_setup.variables, ones)},
      input_shape=setup.info.input_shape, num_classes=setup.info.num_classes, batch_size=recipe.batch_size,
      eval_batch_size=recipe.eval_batch_size)
  files.write_json(workdir / cost.COST_FILE, {**costs, 'device': jax.devices()[0].device_kind,
                                         'batch_size': recipe.batch_size, 'eval_batch_size': recipe.eval_batch_size})
  table = cost.comparison_table(costs)
  log.info('Dense against compact (%s):\n%s', jax.devices()[0].device_kind, table)
  return costs
