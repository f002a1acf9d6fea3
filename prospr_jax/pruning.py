"""The pruning step of an experiment: score with the configured criterion, threshold, write artifacts."""

from __future__ import annotations

import logging

import json
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import prospr_jax
from prospr_jax import data, masks as masks_lib, plots, sharding
from prospr_jax.sparsity_report import SparsityReport

PyTree = Any
log = logging.getLogger(__name__)


def criterion_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The keyword arguments of ``config.criterion`` taken from ``config.prune``."""
  kwargs: dict[str, Any] = {'structured': config.prune.structured}
  if config.criterion == 'prospr':
    kwargs.update(inner_lr=config.prune.inner_lr, inner_momentum=config.prune.inner_momentum,
                  first_order=config.prune.first_order)
  elif config.criterion == 'random':
    kwargs.update(rng=config.seed)
  return kwargs


def _global_batches(loader_iterator: Iterator[dict], mesh: Mesh) -> Iterator[dict]:
  for local in loader_iterator:
    yield sharding.global_batch({'image': local['image'], 'label': local['label']}, mesh)


def _stacked_global_batches(loader_iterator: Iterator[dict], count: int, mesh: Mesh) -> dict[str, jax.Array]:
  """``count`` batches stacked on a new leading axis, the batch axis split over 'data'."""
  local = [next(loader_iterator) for _ in range(count)]
  spec = NamedSharding(mesh, PartitionSpec(None, 'data'))
  stacked = {key: np.stack([batch[key] for batch in local]) for key in ('image', 'label')}
  return {key: jax.make_array_from_process_local_data(spec, value) for key, value in stacked.items()}


def compute_scores(config: ml_collections.ConfigDict, params: PyTree, loss_fn, info: data.DatasetInfo,
                   source, mesh: Mesh) -> PyTree:
  """Scores of ``config.criterion`` on M + 1 training batches (a stream for streamed first-order ProsPr)."""
  criterion = prospr_jax.get_criterion(config.criterion)
  loader = data.train_loader(info, source, global_batch_size=config.prune.batch_size, seed=config.seed + 1,
                             worker_count=config.worker_count)
  batches = iter(loader)
  params = sharding.replicate(params, mesh)
  if config.prune.streamed:
    if config.criterion != 'prospr' or not config.prune.first_order:
      raise ValueError('config.prune.streamed needs criterion "prospr" with prune.first_order=True')
    return prospr_jax.prospr_saliency_streamed(
        params, _global_batches(batches, mesh), loss_fn=loss_fn, num_steps=config.prune.num_steps,
        inner_lr=config.prune.inner_lr, inner_momentum=config.prune.inner_momentum,
        structured=config.prune.structured, log_every=max(1, config.prune.num_steps // 10))
  stacked = _stacked_global_batches(batches, config.prune.num_steps + 1, mesh)
  return criterion(params, stacked, loss_fn=loss_fn, **criterion_kwargs(config))


def prune(config: ml_collections.ConfigDict, model, variables: PyTree, info: data.DatasetInfo, source, mesh: Mesh,
          workdir: pathlib.Path) -> PyTree:
  """Score, keep the top-k, and write ``mask.npz``, the sparsity report (JSON, text) and a density plot."""
  loss_fn = prospr_jax.flax_loss_fn(model, variables, rngs={'dropout': jax.random.key(config.seed)})
  start = time.perf_counter()
  log.info('Scoring with %s (%s) on %d batches of %d', config.criterion, criterion_kwargs(config),
               config.prune.num_steps + 1, config.prune.batch_size)
  scores = jax.block_until_ready(compute_scores(config, variables['params'], loss_fn, info, source, mesh))
  masks = masks_lib.global_topk_mask(scores, config.prune.sparsity,
                                     keep_one_per_layer=config.prune.keep_one_per_layer)
  seconds = time.perf_counter() - start
  report = prospr_jax.sparsity_report(masks, variables['params'])
  log.info('Pruned to %.2f%% density in %.1f s:\n%s', 100 * report.density, seconds, report)
  if jax.process_index() == 0:
    write_mask_artifacts(workdir, masks, report, config, seconds)
  return masks


def write_mask_artifacts(workdir: pathlib.Path, masks: PyTree, report: SparsityReport,
                         config: ml_collections.ConfigDict, seconds: float) -> None:
  np.savez(workdir / 'mask.npz', **{name: np.asarray(m) for name, m in masks_lib.named_leaves(masks)})
  report.save_json(workdir / 'sparsity_report.json')
  (workdir / 'sparsity_report.txt').write_text(str(report) + '\n')
  plots.plot_layer_density(report, workdir / 'layer_density.png',
                           title=f'{config.model} / {config.dataset}: {config.criterion} at sparsity '
                                 f'{config.prune.sparsity:.1%}')
  (workdir / 'pruning.json').write_text(json.dumps(
      {'criterion': config.criterion, 'prune': config.prune.to_dict(), 'seconds': seconds,
       'density': report.density}, indent=2))


def load_mask(path: str | pathlib.Path, params: PyTree) -> PyTree:
  """A mask written by ``prune`` (``mask.npz``: layer name -> array), as a tree mirroring ``params``."""
  with np.load(path) as saved:
    masks = masks_lib.masks_from_mapping({name: saved[name].astype(bool) for name in saved.files}, params)
  return jax.tree.map(jnp.asarray, masks)
