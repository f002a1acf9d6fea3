"""Iterative lottery ticket rewinding, the paper's "LTR after training": the rounds to a sparsity, each round's mask.

Frankle et al. (2020, "Linear mode connectivity and the lottery ticket hypothesis"; 2021, "PruneSpec neural networks
at initialization: why are we missing the mark?") as facebookresearch/open_lth runs it (``lottery/runner.py``,
``pruning/sparse_global.py``): round 0 is the trained dense network; round k removes 20% of the weights round k - 1
kept, those of smallest ``|w|`` in round k - 1's TRAINED network, over all prunable weights at once (kernels,
``ndim > 1``, as every criterion here); rewinds the kept weights to the rewind point and retrains to the end of the
recipe; repeat. After k rounds the sparsity is ``1 - 0.8^k``: the paper's grid (20.0% ... 98.2%) is its first 18
rounds, so one chain of rounds per seed yields every sparsity of that grid, each round its own sweep cell.

Counts: round k removes ``ceil(0.2 * remaining)`` weights, open_lth's count (its threshold also removes the weight at
the threshold, one more: here the count is exact, ties broken by index), so after k rounds at most k weights fewer
than ``N * 0.8^k`` remain. Masks are monotone: a round keeps only weights the previous round kept.

A sparsity that is no ``1 - 0.8^k`` (the LeNet grid's 99.3%, 99.5%) is reached by the full rounds below it and one
last, shorter round from the last of them, which keeps ``ceil(N * (1 - sparsity))`` weights: the count every other
criterion keeps at that sparsity.

Retraining is the one-shot rewinding reference's (``after_training``): the same rewind point (the dense run's end of
epoch 1), the remaining ``num_epochs - 1`` epochs, every round. ``run_round`` runs one round in its cell's folder;
``sweep.cells`` runs the rounds a cell needs before it, each in its own cell.
"""

from __future__ import annotations

import functools
import json
import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from chex import ArrayTree

from prospr_jax import mask_files, masks as masks_lib, topk
from prospr_jax.harness import train_loop
from prospr_jax.harness.records import Recipe
from prospr_jax.harness.setup import Setup
from prospr_jax.sweep import after_training

FRACTION = 0.2  # of the weights the previous round kept, removed by each round (open_lth's pruning_fraction)
DECIMALS = 6  # a round's sparsity is rounded as the sweep rounds its cells' (``sweep.grid``)


def full_round_sparsities(below: float) -> tuple[float, ...]:
  """The sparsities ``1 - 0.8^k`` (k = 1, 2, ...; rounded to 6 decimals) of the full rounds below ``below``."""
  rounds, k = [], 1
  while (sparsity := round(1.0 - (1.0 - FRACTION) ** k, DECIMALS)) < min(below, 1.0):
    rounds.append(sparsity)
    k += 1
  return tuple(rounds)


def is_full_round(sparsity: float) -> bool:
  """Whether ``sparsity`` is ``1 - 0.8^k`` for some k >= 1 (to 6 decimals): a round of 20% reaches it exactly."""
  return round(sparsity, DECIMALS) in full_round_sparsities(round(sparsity, DECIMALS) + 10 ** -DECIMALS)


def chain(sparsity: float) -> tuple[float, ...]:
  """The rounds, by their sparsities, that the cell at ``sparsity`` ends: the full rounds below it, then itself."""
  return (*full_round_sparsities(round(sparsity, DECIMALS)), round(sparsity, DECIMALS))


def previous_round_sparsity(sparsity: float) -> float | None:
  """The sparsity of the round the round at ``sparsity`` prunes further; None for the first (it prunes the dense)."""
  rounds = chain(sparsity)
  return rounds[-2] if len(rounds) > 1 else None


def kept_after(sparsity: float, remaining: int, total: int) -> int:
  """How many weights the round at ``sparsity`` keeps of the ``remaining`` (of ``total``) the previous round kept."""
  if is_full_round(sparsity):
    return remaining - math.ceil(FRACTION * remaining)
  return min(remaining, topk.num_to_keep(total, sparsity))


def round_mask(params: ArrayTree, previous: ArrayTree, sparsity: float, *,
               keep_one_per_layer: bool = False) -> ArrayTree:
  """The mask of the round at ``sparsity``: of the weights ``previous`` keeps, the ``kept_after`` largest ``|w|``.

  ``params``: the previous round's trained weights (the dense network's for the first round); ``previous``: its
  mask (bool, ``masks.all_ones_mask`` for the dense network). Layer collapse as ``masks.global_topk_mask``.
  """
  scores = jax.tree.map(lambda m, p: None if m is None else jnp.where(m, jnp.abs(p), -1.0), previous, params,
                        is_leaf=masks_lib.is_none)  # a weight pruned before ranks below every kept one
  total = sum(int(np.size(m)) for _, m in masks_lib.named_leaves(previous))
  remaining = sum(int(np.sum(m)) for _, m in masks_lib.named_leaves(previous))
  keep = kept_after(sparsity, remaining, total)
  if keep == 0:
    raise topk.LayerCollapseError(f'the round at sparsity {sparsity} would keep none of the {remaining} weights '
                                       'left: lower the sparsity')
  mask = topk.global_topk_mask(scores, 1.0 - keep / total, keep_one_per_layer=keep_one_per_layer)
  kept = sum(int(np.sum(m)) for _, m in masks_lib.named_leaves(mask))
  assert kept == keep, f'the round at sparsity {sparsity} kept {kept} weights, not {keep}'
  return mask


def previous_round(config: ml_collections.ConfigDict, setup: Setup,
                   previous_dir: pathlib.Path) -> tuple[ArrayTree, ArrayTree]:
  """``(trained variables, mask)`` of the finished round in ``previous_dir``; its layer collapse is this round's."""
  done = previous_dir / 'results.json'
  outcome = json.loads(done.read_text()) if done.exists() else {}
  if collapse := outcome.get('collapsed'):
    raise topk.LayerCollapseError(f'the round before, {previous_dir}, collapsed: {collapse}')
  if diverged := outcome.get('diverged'):
    raise train_loop.TrainingDiverged(f'the round before, {previous_dir}, diverged: {diverged}')
  steps_per_epoch, _ = train_loop.recipe_steps(Recipe.of(config), setup)
  if (previous_dir / 'mask.npz').exists():
    mask = mask_files.load_masks(previous_dir / 'mask.npz', setup.variables['params'])
    checkpoints = previous_dir / 'pruned' / after_training.CHECKPOINTS
    if (checkpoints / str(config.num_epochs * steps_per_epoch)).is_dir():
      return after_training.restore_variables(config, setup, checkpoints, config.num_epochs * steps_per_epoch,
                                              mask), mask
  raise after_training.MissingDenseRun(f'the trained network of the round before is missing from {previous_dir} '
                                       '(an imported row keeps none): delete that folder and rerun the sweep to '
                                       'train that round again')


def run_round(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, dense_dir: str | pathlib.Path,
              previous_dir: str | pathlib.Path | None) -> dict[str, Any]:
  """Run the round at ``config.prune.sparsity`` in ``workdir`` (resumable), pruning the round in ``previous_dir``
  (None: the first round, which prunes the dense network in ``dense_dir``); ``after_training.run_reference``."""
  if (previous_dir is None) != (previous_round_sparsity(config.prune.sparsity) is None):
    raise ValueError(f'the round at sparsity {config.prune.sparsity} prunes the round at '
                     f'{previous_round_sparsity(config.prune.sparsity)}: give that cell as previous_dir')

  def pruned_from(setup: Setup) -> tuple[ArrayTree, after_training.MaskOf]:
    if previous_dir is None:
      trained = after_training.trained_variables(config, setup, pathlib.Path(dense_dir))
      previous = masks_lib.all_ones_mask(setup.variables['params'])
    else:
      trained, previous = previous_round(config, setup, pathlib.Path(previous_dir))
    return trained, functools.partial(round_mask, previous=previous, sparsity=config.prune.sparsity,
                                      keep_one_per_layer=config.prune.keep_one_per_layer)

  return after_training.run_reference(config, workdir, dense_dir, pruned_from=pruned_from)
