"""The testable driver: ``prune_and_train(config, workdir)`` and ``train_and_evaluate(config, workdir)``.

Prune at initialization with the configured criterion, then train the pruned
network from its initial weights with the paper's recipe, evaluating and
checkpointing every epoch. A rerun with the same workdir resumes on its own.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from chex import ArrayTree

from prospr_jax import files, mask_files, masks as masks_lib
from prospr_jax.harness import pruned_network, pruning, reports, train_loop, validation
from prospr_jax.harness.records import PruneSpec, Recipe, Running
from prospr_jax.harness.setup import Setup, make_setup
from prospr_jax.models import compaction
from prospr_jax.runtime import workdir as workdir_lib

log = logging.getLogger(__name__)
RESULTS_FILE = 'results.json'
# Written when training ends: a raised num_epochs makes them stale, so they are deleted before it is recorded.
FINAL_FILES = (RESULTS_FILE, compaction.TRAINED_FILE)


@contextlib.contextmanager
def claimed(config: ml_collections.ConfigDict, workdir: pathlib.Path,
            validate: Callable[[ml_collections.ConfigDict], None] = validation.validate_config) -> Iterator[None]:
  """Validate ``config``, then hold ``workdir`` for this run: its lock (process 0), its recorded config checked."""
  validate(config)
  workdir.mkdir(parents=True, exist_ok=True)
  with workdir_lib.locked(workdir) if jax.process_index() == 0 else contextlib.nullcontext():
    workdir_lib.check_config(workdir, config, write=jax.process_index() == 0, final_files=FINAL_FILES)
    yield


def prune_and_train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Prune at initialization with ``config.criterion``, train the pruned network, report; resumable."""
  workdir = pathlib.Path(workdir)
  with claimed(config, workdir):
    prune_spec, recipe, running = PruneSpec.of(config), Recipe.of(config), Running.of(config)
    setup = make_setup(config)
    mask_path = workdir / 'mask.npz'
    if mask_path.exists():  # written last by the pruning step, under this same config (check_config)
      mask = pruned_network.load_mask(prune_spec.structured, setup, mask_path)
      log.info('Using the mask already in %s', mask_path)
    else:
      mask = pruning.prune(config, setup.model, setup.variables, setup.info, setup.train_source, setup.mesh,
                           workdir)
    results = reports.mask_results(prune_spec, setup, mask)
    pruned_setup, pruned_mask = pruned_network.network_to_train(config, setup, mask, workdir)  # compact: saved, measured
    if recipe.num_epochs == 0:
      return results
    network = 'compact' if prune_spec.compacts else 'pruned'
    results['pruned'] = train_loop.train(recipe, running, pruned_setup, pruned_mask, workdir / 'pruned',
                                         title=train_loop.network_title(prune_spec, network))
    if prune_spec.compacts:
      train_loop.export_trained(recipe, running.seed, pruned_setup, pruned_mask, workdir / 'pruned', workdir)
    if config.compare_dense:
      results['dense'] = train_loop.train(recipe, running, setup, masks_lib.all_ones_mask(setup.variables['params']),
                                          workdir / 'dense', title=train_loop.network_title(prune_spec, 'dense'))
    if jax.process_index() == 0:
      files.write_json(workdir / RESULTS_FILE, results)
      print(reports.format_results(prune_spec, running.label, recipe.num_epochs, results), flush=True)
      reports.print_costs(workdir)
    return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, float]:
  """Train dense, or with the mask at ``config.mask_path`` (a ``mask.npz`` written by prune.py); compact if
  the mask is a channel mask (``config.prune.structured``) and ``config.prune.compact``."""
  workdir = pathlib.Path(workdir)
  with claimed(config, workdir):
    prune_spec, recipe, running = PruneSpec.of(config), Recipe.of(config), Running.of(config)
    setup = make_setup(config)
    params = setup.variables['params']
    if config.mask_path:
      mask = load_mask_for(config.mask_path, prune_spec.structured, setup)
      entries, weights = reports.reports(prune_spec.structured, setup, mask)
    else:  # dense is dense: a weight mask of ones, and no channel to report, whatever config.prune.structured says
      mask = masks_lib.all_ones_mask(params)
      entries, weights = reports.mask_reports(setup.model, params, mask, structured=False)
    log.info('Training with %.2f%% of the prunable weights (%s):\n%s', 100 * weights.density,
             config.mask_path or 'dense', entries)
    train_setup, train_mask = pruned_network.network_to_train(config, setup, mask, workdir) if config.mask_path else (setup, mask)
    title = (f'{"compact" if prune_spec.compacts else "masked"} network ({1 - weights.density:.1%} weight sparsity, '
             f'{config.mask_path})' if config.mask_path else train_loop.network_title(prune_spec, 'dense'))
    result = train_loop.train(recipe, running, train_setup, train_mask, workdir, title=title)
    if config.mask_path and prune_spec.compacts:
      train_loop.export_trained(recipe, running.seed, train_setup, train_mask, workdir, workdir)
    if jax.process_index() == 0:
      print(reports.format_results(prune_spec, running.label, recipe.num_epochs,
                                   {'pruned': result, 'weight_sparsity': 1.0 - weights.density},
                           name='masked' if config.mask_path else 'dense'), flush=True)
      reports.print_costs(workdir)
    return result


def load_mask_for(mask_path: str, structured: bool, setup: Setup) -> ArrayTree:
  """The mask at ``mask_path`` (``config.mask_path``): a channel mask fitting the model's plan when ``structured``,
  else a weight mask naming every prunable layer with its exact shape."""
  if structured:
    return pruned_network.load_mask(structured, setup, mask_path)
  params = setup.variables['params']
  loaded = mask_files.load_masks(mask_path, params)
  per_channel = jax.tree.map(lambda m, p: None if m is None else np.shape(m) != np.shape(p), loaded, params,
                             is_leaf=masks_lib.is_none)
  if any(jax.tree.leaves(per_channel)):
    raise ValueError(f'mask file {mask_path} holds one entry per channel: train it with '
                     'config.prune.structured=True')
  return mask_files.load_masks(mask_path, params, template=masks_lib.ones_mask(params))


