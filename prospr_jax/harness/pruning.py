"""The pruning step of an experiment: score with the configured criterion, threshold, write artifacts.

The harness knows no criterion by name: the registry entry (``criteria/registry.py``)
says which ``config.prune`` keys it takes, whether it prunes in rounds, reads
data, a seed or the model's ``apply_fn``, and which setting divides its logits.
"""

from __future__ import annotations

import functools
import logging
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from chex import ArrayTree
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from prospr_jax import ablations, data, distributions, files, losses, mask_files, models, stability, topk
from prospr_jax import masks as masks_lib
from prospr_jax.channels import scores as channel_scores, target as structured_target
from prospr_jax.criteria import prospr as prospr_lib, registry
from prospr_jax.harness import connectivity, plots, reports, seeds
from prospr_jax.harness.records import PruneSpec, Running, Scoring
from prospr_jax.models import flops, plans
from prospr_jax.runtime import determinism, faults, sharding
from prospr_jax.sparsity import SparsityReport, percent

log = logging.getLogger(__name__)


def distributed_mask_fn(spec: PruneSpec):
  """``(scores, sparsity) -> masks`` under the spec's distribution (global, uniform, erk)."""
  return functools.partial(distributions.make_mask, distribution=spec.distribution,
                           keep_one_per_layer=spec.keep_one_per_layer)


def threshold(spec: PruneSpec, model, params: ArrayTree, scores: ArrayTree) -> ArrayTree:
  """The mask of ``scores`` at ``spec.sparsity``: of the entries, or with ``structured_target='weights'``
  the fewest channels whose weights meet it (``channels/target.py``)."""
  if spec.target == 'weights' and spec.structured:
    return structured_target.mask_for_weight_sparsity(plans.channel_plan(model, params), params, scores,
                                                      spec.sparsity, distributed_mask_fn(spec))
  return distributed_mask_fn(spec)(scores, spec.sparsity)


def connected_mask(spec: PruneSpec, model, variables: ArrayTree, scores: ArrayTree,
                   input_shape: tuple[int, ...]) -> ArrayTree:
  """``threshold``, keeping a mask that empties layers a shortcut bypasses (unstructured; ``connectivity.py``);
  a mask that leaves no path from the input to the output is refused (``topk.LayerCollapseError``)."""
  try:
    return threshold(spec, model, variables['params'], scores)
  except topk.LayerCollapseError as error:
    if spec.structured:
      raise
    return connectivity.mask_or_collapse(error, model, variables, input_shape)


def criterion_kwargs(scoring: Scoring, spec: PruneSpec, criterion: registry.Criterion, model=None,
                     variables: ArrayTree = None) -> dict[str, Any]:
  """The keyword arguments of ``criterion`` (``scoring.criterion``'s registry entry; the model, for SynFlow)."""
  kwargs: dict[str, Any] = {'invert': scoring.invert, 'precision': scoring.precision}
  if not spec.structured:  # structured scoring passes its own (channel_scores.score_channels)
    kwargs['structured'] = False
  kwargs.update({key: scoring.settings[key] for key in criterion.settings})
  if criterion.seeded:
    kwargs['rng'] = seeds.random_criterion(scoring.seed)
  if criterion.prunes_in_rounds:
    kwargs.update(sparsity=spec.sparsity, rounds=scoring.settings['rounds'] or criterion.default_rounds,
                  mask_fn=distributed_mask_fn(spec))
  if criterion.needs_apply_fn and model is not None:
    kwargs['apply_fn'] = losses.flax_apply_fn(model, variables, absolute_state=True)
  return kwargs


def scoring_model(conv_impl: str, model):
  """``model`` with the scoring's convolution (``Scoring.conv_impl``; '': the training one)."""
  return models.with_conv_impl(model, conv_impl) if conv_impl else model


def loss_fn_for(scoring: Scoring, criterion: registry.Criterion, model, variables: ArrayTree):
  """Train-mode cross-entropy, divided by the criterion's temperature setting if it has one (GraSP)."""
  setting = criterion.temperature_setting
  return losses.flax_loss_fn(model, variables, temperature=scoring.settings[setting] if setting else 1.0,
                             rngs={'dropout': seeds.prune_dropout(scoring.seed)})


def _scaled_inputs(loader_iterator: Iterator[dict], scale: float) -> Iterator[dict]:
  """The loader's batches with their images times ``scale`` (the stability check's nudged inputs)."""
  for batch in loader_iterator:
    yield {**batch, 'image': batch['image'] * scale} if scale != 1.0 else batch


def _global_batches(loader_iterator: Iterator[dict], mesh: Mesh) -> Iterator[dict]:
  for local in loader_iterator:
    _check_finite_images(local['image'])
    yield sharding.global_batch({'image': local['image'], 'label': local['label']}, mesh)


def _check_finite_images(images: np.ndarray, count: int = 1) -> None:
  """Refuse pruning batches holding NaN or Inf before any criterion blames its own settings."""
  if not np.isfinite(images).all():
    raise ValueError(f'the pruning batches of {count} x {images.shape[-4]} images hold NaN or Inf: check the dataset '
                     'and its normalisation')


def _stacked_global_batches(loader_iterator: Iterator[dict], count: int, mesh: Mesh) -> dict[str, jax.Array]:
  """``count`` batches stacked on a new leading axis, the batch axis split over 'data'."""
  local = [next(loader_iterator) for _ in range(count)]
  spec = NamedSharding(mesh, PartitionSpec(None, 'data'))
  stacked = {key: np.stack([batch[key] for batch in local]) for key in ('image', 'label')}
  _check_finite_images(stacked['image'], count)
  return {key: jax.make_array_from_process_local_data(spec, value) for key, value in stacked.items()}


def compute_scores(scoring: Scoring, spec: PruneSpec, model, variables: ArrayTree, info: data.DatasetInfo,
                   source, mesh: Mesh, input_scale: float = 1.0) -> ArrayTree:
  """Scores of ``scoring.criterion`` on M + 1 training batches (a stream for streamed first-order ProsPr).

  Structured: channel scores ``{group name: (channels,)}`` over the model's channel plan, tied channels scored
  as one (``channel_scores.score_channels``).
  """
  criterion = registry.get_criterion(scoring.criterion)
  model = scoring_model(scoring.conv_impl, model)
  loss_fn = loss_fn_for(scoring, criterion, model, variables)
  loader = data.train_loader(info, source, global_batch_size=scoring.batch_size,
                             seed=seeds.prune_data(scoring.seed), worker_count=scoring.worker_count)
  batches = _scaled_inputs(iter(loader), input_scale)  # every batch read: streamed, stacked, later rounds'
  params = sharding.replicate(variables['params'], mesh)
  score = _scorer(spec.structured, model, variables, params, info.input_shape)
  if scoring.streamed:  # validate_config allows it only for first-order ProsPr
    scores = score(prospr_lib.prospr_saliency_streamed, _global_batches(batches, mesh), loss_fn=loss_fn,
                   num_steps=scoring.num_steps, inner_lr=scoring.settings['inner_lr'],
                   inner_momentum=scoring.settings['inner_momentum'], log_every=max(1, scoring.num_steps // 10),
                   precision=scoring.precision)
    return ablations.invert_scores(scores) if scoring.invert else scores
  # Data-free criteria read one batch, for the input shape and the output layer.
  count = scoring.num_steps + 1 if criterion.needs_data else 1
  stacked = _stacked_global_batches(batches, count, mesh)
  kwargs = criterion_kwargs(scoring, spec, criterion, model, variables)
  if criterion.batches_per_round:  # round r >= 1 reads the next ``count`` batches of the same stream
    kwargs['round_batches'] = lambda r: _stacked_global_batches(batches, count, mesh)
  return score(criterion, stacked, loss_fn=loss_fn, **kwargs)  # 3SP: score_channels costs the channels


def _scorer(structured: bool, model, variables: ArrayTree, params: ArrayTree,
            input_shape: tuple[int, ...]):
  """``score(fn, batches, **kwargs)``: ``fn`` on the params, or on the model's channel plan when structured
  (channel costs counted from shapes, the same under every convolution implementation)."""
  if not structured:
    return lambda fn, batches, **kwargs: fn(params, batches, **kwargs)
  plan = plans.channel_plan(model, params)
  positions = flops.output_positions(model, variables, input_shape)
  return lambda fn, batches, **kwargs: channel_scores.score_channels(fn, plan, params, batches, positions=positions,
                                                                     **kwargs)


def prune(config: ml_collections.ConfigDict, model, variables: ArrayTree, info: data.DatasetInfo, source,
          mesh: Mesh, workdir: pathlib.Path) -> ArrayTree:
  """Score, threshold under ``config.distribution``, apply a mask ablation, write the mask and its report.

  Writes ``mask.npz``, ``scores.npz``, the sparsity report (JSON, text), a density plot and ``pruning.json``.
  """
  start = time.perf_counter()
  scoring, spec = Scoring.of(config), PruneSpec.of(config)
  log.info('Scoring with %s (%s), distribution %s, ablation %s, on %d batches of %d', scoring.criterion,
           {k: v for k, v in criterion_kwargs(scoring, spec, registry.get_criterion(scoring.criterion)).items()
            if k != 'mask_fn'}, spec.distribution, spec.ablation, scoring.num_steps + 1, scoring.batch_size)
  # Scores of the global batch are replicated: every process thresholds the same values on its own.
  scores = sharding.host_value(compute_scores(scoring, spec, model, variables, info, source, mesh))
  faults.point('scoring')
  masks = connected_mask(spec, model, variables, scores, info.input_shape)
  if spec.ablation == 'shuffle':
    masks = ablations.shuffle_within_layers(masks, seeds.shuffle_ablation(scoring.seed))
  sharding.assert_same_on_every_process(mask_files.checksum(masks), 'the pruning mask')
  seconds = time.perf_counter() - start
  report, weights = reports.mask_reports(model, variables['params'], masks, spec.structured)
  log.info('Pruned to %.2f%% density in %.1f s:\n%s', 100 * report.density, seconds, report)
  checked = check_stability(scoring, spec, model, variables, info, source, mesh, masks) \
      if scoring.settings['check_stability'] else None
  if jax.process_index() == 0:
    write_mask_artifacts(workdir, masks, report, spec, Running.of(config).label, seconds, scores, weights, scoring,
                         checked)
  return masks


def check_stability(scoring: Scoring, spec: PruneSpec, model, variables: ArrayTree, info: data.DatasetInfo, source,
                    mesh: Mesh, masks: ArrayTree) -> dict[str, Any]:
  """The mask scored a second time, more exactly (``stability.second_scoring``), and the kept entries both share."""
  second = stability.second_scoring(scoring.precision, jax.default_backend())
  scores = sharding.host_value(compute_scores(scoring.with_settings(precision=second.precision), spec, model, variables,
                                              info, source, mesh, second.input_scale))
  try:
    again = connected_mask(spec, model, variables, scores, info.input_shape)
  except topk.LayerCollapseError as error:  # the second scoring's collapse is a difference, not the cell's outcome
    again = error.mask
    if again is None:
      raise
  overlap = {'against': second.label, **stability.kept_overlap(masks, again)}
  if (message := stability.warning(second, overlap['total'])) is not None:
    log.warning(message)
  else:
    log.info('Stability: scored again (%s), %.2f%% of the kept entries are the same', second.label,
             100 * overlap['total'])
  return overlap


def write_mask_artifacts(workdir: pathlib.Path, masks: ArrayTree, report: SparsityReport, spec: PruneSpec,
                         label: str, seconds: float, scores: ArrayTree, weights: SparsityReport | None = None,
                         scoring: Scoring | None = None, checked: dict[str, Any] | None = None) -> None:
  """The pruning step's files; ``mask.npz`` last, so a workdir holding it holds all of them.

  ``label`` ('<model> on <dataset>') titles the density plot. ``pruning.json`` records how the mask was computed:
  ``scoring``'s settings, or, for a mask of the trained weights (``scoring=None``), that it was not scored at
  initialisation. Structured: the report counts channels, and its ``weights`` the kernel entries those channels own.
  """
  mask_files.save_masks(workdir / 'scores.npz', scores)
  choice = {'criterion': spec.criterion, 'distribution': spec.distribution, 'ablation': spec.ablation,
            'sparsity': spec.sparsity, 'structured': spec.structured}
  if spec.structured:
    choice['structured_target'] = spec.structured_target
  extra = {}
  if weights is not None and weights is not report:
    extra['weights'] = {k: v for k, v in weights.to_dict().items() if k != 'layers'}
  report.save_json(workdir / 'sparsity_report.json', **choice, **extra)
  header = ', '.join(f'{key} {value}' for key, value in choice.items())
  files.write_text(workdir / 'sparsity_report.txt', f'{header}\n{report}\n')
  unit = 'channels' if spec.structured else 'weights'  # what the report counts: the mask's entries
  plots.plot_layer_density(report, workdir / 'layer_density.png', unit=unit,
                           title=f'{label}: {spec.criterion} at sparsity {percent(spec.sparsity)}')
  computed = {'prune': dict(scoring.settings)} if scoring is not None else {'computed_from': 'the trained weights'}
  if emptied := [name for name, kept in masks_lib.named_leaves(masks) if not np.any(kept)]:
    computed['emptied_layers'] = emptied  # bypassed by a shortcut (connectivity.py): the network still computes
  files.write_json(workdir / 'pruning.json',
                   {**choice, **computed, 'seconds': seconds, 'density': report.density,
                    'backend': jax.default_backend(), 'deterministic_ops': determinism.is_requested(),
                    **({'stability': checked} if checked is not None else {})})
  faults.point('pruning_files')
  mask_files.save_masks(workdir / 'mask.npz', masks)
