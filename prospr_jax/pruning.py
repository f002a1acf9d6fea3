"""The pruning step of an experiment: score with the configured criterion, threshold, write artifacts."""

from __future__ import annotations

import logging

import functools
import json
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import prospr_jax
from prospr_jax import ablations, data, distributions, masks as masks_lib, plots, sharding
from prospr_jax.sparsity_report import SparsityReport

PyTree = Any
log = logging.getLogger(__name__)


DEFAULT_ROUNDS = {'synflow': 100, 'iterative_snip': 60, 'force': 60}


def mask_fn(config: ml_collections.ConfigDict):
  """``(scores, sparsity) -> masks`` under ``config.distribution``."""
  return functools.partial(distributions.make_mask, distribution=config.distribution,
                           keep_one_per_layer=config.prune.keep_one_per_layer)


def criterion_kwargs(config: ml_collections.ConfigDict, model=None, variables: PyTree = None) -> dict[str, Any]:
  """The keyword arguments of ``config.criterion``, from ``config.prune`` (and the model, for SynFlow)."""
  name = config.criterion
  kwargs: dict[str, Any] = {'structured': config.prune.structured}
  if name == 'prospr':
    kwargs.update(inner_lr=config.prune.inner_lr, inner_momentum=config.prune.inner_momentum,
                  first_order=config.prune.first_order)
  elif name == 'random':
    kwargs.update(rng=config.seed)
  if name in prospr_jax.ITERATIVE:
    kwargs.update(sparsity=config.prune.sparsity, rounds=config.prune.rounds or DEFAULT_ROUNDS[name],
                  mask_fn=mask_fn(config), invert=config.ablation == 'invert')
  if name == 'synflow' and model is not None:
    kwargs.update(apply_fn=prospr_jax.flax_apply_fn(model, variables, absolute_state=True))
  return kwargs


def loss_fn_for(config: ml_collections.ConfigDict, model, variables: PyTree):
  """Train-mode cross-entropy; GraSP's with its logit temperature."""
  temperature = config.prune.grasp_temperature if config.criterion.startswith('grasp') else 1.0
  return prospr_jax.flax_loss_fn(model, variables, temperature=temperature,
                                 rngs={'dropout': jax.random.key(config.seed)})


def _global_batches(loader_iterator: Iterator[dict], mesh: Mesh) -> Iterator[dict]:
  for local in loader_iterator:
    yield sharding.global_batch({'image': local['image'], 'label': local['label']}, mesh)


def _stacked_global_batches(loader_iterator: Iterator[dict], count: int, mesh: Mesh) -> dict[str, jax.Array]:
  """``count`` batches stacked on a new leading axis, the batch axis split over 'data'."""
  local = [next(loader_iterator) for _ in range(count)]
  spec = NamedSharding(mesh, PartitionSpec(None, 'data'))
  stacked = {key: np.stack([batch[key] for batch in local]) for key in ('image', 'label')}
  return {key: jax.make_array_from_process_local_data(spec, value) for key, value in stacked.items()}


def compute_scores(config: ml_collections.ConfigDict, model, variables: PyTree, info: data.DatasetInfo,
                   source, mesh: Mesh) -> PyTree:
  """Scores of ``config.criterion`` on M + 1 training batches (a stream for streamed first-order ProsPr)."""
  criterion = prospr_jax.get_criterion(config.criterion)
  loss_fn = loss_fn_for(config, model, variables)
  loader = data.train_loader(info, source, global_batch_size=config.prune.batch_size, seed=config.seed + 1,
                             worker_count=config.worker_count)
  batches = iter(loader)
  params = sharding.replicate(variables['params'], mesh)
  if config.prune.streamed:
    if config.criterion != 'prospr' or not config.prune.first_order:
      raise ValueError('config.prune.streamed needs criterion "prospr" with prune.first_order=True')
    return prospr_jax.prospr_saliency_streamed(
        params, _global_batches(batches, mesh), loss_fn=loss_fn, num_steps=config.prune.num_steps,
        inner_lr=config.prune.inner_lr, inner_momentum=config.prune.inner_momentum,
        structured=config.prune.structured, log_every=max(1, config.prune.num_steps // 10))
  stacked = _stacked_global_batches(batches, config.prune.num_steps + 1, mesh)
  scores = criterion(params, stacked, loss_fn=loss_fn, **criterion_kwargs(config, model, variables))
  if config.ablation == 'invert' and config.criterion not in prospr_jax.ITERATIVE:
    scores = ablations.invert_scores(scores)  # iterative criteria invert inside every round
  return scores


def prune(config: ml_collections.ConfigDict, model, variables: PyTree, info: data.DatasetInfo, source, mesh: Mesh,
          workdir: pathlib.Path) -> PyTree:
  """Score, threshold under ``config.distribution``, apply a mask ablation, write the mask and its report.

  Writes ``mask.npz``, ``scores.npz``, the sparsity report (JSON, text), a density plot and ``pruning.json``.
  """
  start = time.perf_counter()
  log.info('Scoring with %s (%s), distribution %s, ablation %s, on %d batches of %d', config.criterion,
           {k: v for k, v in criterion_kwargs(config).items() if k != 'mask_fn'}, config.distribution,
           config.ablation, config.prune.num_steps + 1, config.prune.batch_size)
  # Scores of the global batch are replicated: every process thresholds the same values on its own.
  scores = sharding.host_value(compute_scores(config, model, variables, info, source, mesh))
  masks = mask_fn(config)(scores, config.prune.sparsity)
  if config.ablation == 'shuffle':
    masks = ablations.shuffle_within_layers(masks, config.seed + 3)
  sharding.assert_same_on_every_process(mask_checksum(masks), 'the pruning mask')
  seconds = time.perf_counter() - start
  report = prospr_jax.sparsity_report(masks, variables['params'])
  log.info('Pruned to %.2f%% density in %.1f s:\n%s', 100 * report.density, seconds, report)
  if jax.process_index() == 0:
    write_mask_artifacts(workdir, masks, report, config, seconds, scores)
  return masks


def mask_checksum(masks: PyTree) -> np.ndarray:
  """Per layer: the kept count and a position-weighted sum of the kept entries (int64)."""
  rows = []
  for _, m in masks_lib.named_leaves(masks):
    flat = np.asarray(m).ravel()
    kept = np.flatnonzero(flat).astype(np.int64)
    rows.append([kept.size, int(np.sum((kept * 2654435761) % 1_000_000_007))])
  return np.asarray(rows, np.int64)


def write_mask_artifacts(workdir: pathlib.Path, masks: PyTree, report: SparsityReport,
                         config: ml_collections.ConfigDict, seconds: float, scores: PyTree) -> None:
  np.savez(workdir / 'mask.npz', **{name: np.asarray(m) for name, m in masks_lib.named_leaves(masks)})
  np.savez(workdir / 'scores.npz', **{name: np.asarray(s) for name, s in masks_lib.named_leaves(scores)})
  choice = {'criterion': config.criterion, 'distribution': config.distribution, 'ablation': config.ablation,
            'sparsity': config.prune.sparsity, 'structured': config.prune.structured}
  (workdir / 'sparsity_report.json').write_text(json.dumps({**choice, **report.to_dict()}, indent=2))
  header = ', '.join(f'{key} {value}' for key, value in choice.items())
  (workdir / 'sparsity_report.txt').write_text(f'{header}\n{report}\n')
  plots.plot_layer_density(report, workdir / 'layer_density.png',
                           title=f'{config.model} / {config.dataset}: {config.criterion} at sparsity '
                                 f'{config.prune.sparsity:.1%}')
  (workdir / 'pruning.json').write_text(json.dumps(
      {**choice, 'prune': config.prune.to_dict(), 'seconds': seconds,
       'density': report.density}, indent=2))


def load_mask(path: str | pathlib.Path, params: PyTree) -> PyTree:
  """A mask written by ``prune`` (``mask.npz``: layer name -> array), as a tree mirroring ``params``."""
  with epath.Path(path).open('rb') as f, np.load(f) as saved:
    masks = masks_lib.masks_from_mapping({name: saved[name].astype(bool) for name in saved.files}, params)
  return jax.tree.map(jnp.asarray, masks)
