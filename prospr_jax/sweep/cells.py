"""One cell of a sweep: run it as a normal experiment in its own workdir, tell whether it finished, read its row.

A cell is finished when its ``results.json`` exists: ``prune_and_train`` writes
it last, and the sweep writes one for the dense cell, and one for a cell whose
criterion empties a layer (layer collapse: recorded as the cell's result). A dense cell trained by
``train.py`` (a printed command) has none; it is finished when its
``metrics.jsonl`` reaches ``num_epochs``.

A cell of a reference that prunes after training (``after_training``) starts
from the finished dense cell of its seed, which the grid runs first; without it
the cell is refused, naming the dense cell's folder. A cell of the iterative
reference (``iterative_rewinding``) is one round: it prunes the round before it,
so it first runs the unfinished rounds below it, each in the cell of its sparsity
(finished and recorded like any cell, whether the grid shows that sparsity or not).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from prospr_jax import (
  after_training,
  data,
  experiment,
  files,
  iterative_rewinding,
  masks as masks_lib,
  workdir as workdir_lib,
)
from prospr_jax.models import conv as conv_lib, get_model
from prospr_jax.sweep.grid import DENSE, Cell, cell_config

RESULTS_FILE = 'results.json'
CELL_FILE = 'cell.json'
METRICS_FILE = 'metrics.jsonl'
log = logging.getLogger(__name__)


def _read_json(path: pathlib.Path) -> dict[str, Any]:
  return json.loads(path.read_text()) if path.exists() else {}


def _completed_training(cell_dir: pathlib.Path) -> dict[str, Any] | None:
  """The last metrics row of a ``train.py`` run in ``cell_dir`` once it reached ``num_epochs``, else None."""
  metrics, config = cell_dir / METRICS_FILE, cell_dir / workdir_lib.CONFIG_FILE
  if not (metrics.exists() and config.exists()):
    return None
  rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
  return rows[-1] if rows and rows[-1]['epoch'] >= json.loads(config.read_text())['num_epochs'] else None


def final_results(cell: Cell, cell_dir: pathlib.Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
  """``(results, final eval row)`` of a finished cell, None for an unfinished one."""
  results = _read_json(cell_dir / RESULTS_FILE)
  if results:
    return results, None if results.get('collapsed') else results.get('pruned') or results[DENSE]
  final = _completed_training(cell_dir) if cell.is_dense else None
  return None if final is None else ({'weight_sparsity': 0.0}, final)


def is_finished(cell: Cell, workdir: pathlib.Path) -> bool:
  return final_results(cell, cell.directory(workdir)) is not None


def config_hash(cell_dir: pathlib.Path) -> str:
  """The first 12 hex digits of the sha256 of the cell's recorded ``config.json``."""
  return hashlib.sha256((cell_dir / workdir_lib.CONFIG_FILE).read_bytes()).hexdigest()[:12]


def cell_row(cell: Cell, workdir: pathlib.Path) -> dict[str, Any] | None:
  """The ``results.jsonl`` row of a finished cell (accuracies as fractions, times in seconds), else None."""
  cell_dir = cell.directory(workdir)
  finished = final_results(cell, cell_dir)
  if finished is None:
    return None
  results, final = finished
  collapse = results.get('collapsed')
  final = final or {'eval_top1': None, 'eval_top5': None}
  pruning_seconds = _read_json(cell_dir / 'pruning.json').get('seconds')
  cell_seconds = _read_json(cell_dir / CELL_FILE).get('seconds')
  training_seconds = None if cell_seconds is None else cell_seconds - (pruning_seconds or 0.0)
  return {'config_hash': config_hash(cell_dir), 'criterion': cell.criterion, 'sparsity': cell.sparsity,
          'seed': cell.seed, 'kept_weights': results.get('kept_weights'),
          'weight_sparsity': results.get('weight_sparsity'), 'top1': final['eval_top1'], 'top5': final['eval_top5'],
          'pruning_seconds': pruning_seconds, 'training_seconds': training_seconds, 'cell_seconds': cell_seconds,
          'cell': str(cell_dir.relative_to(workdir)), **({'collapsed': collapse} if collapse else {})}


def prunable_weights(config: ml_collections.ConfigDict) -> int:
  """The number of prunable weights (kernels: ``ndim > 1``) of the config's model, from shapes alone."""
  info = data.get_dataset_info(config.dataset)
  model = get_model(config.model, info.num_classes, conv_general_dilated=conv_lib.resolve_conv_impl(
                        config.conv_impl, column_mib=config.get('conv_column_mib')),
                    **config.model_kwargs)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jax.ShapeDtypeStruct((1, *info.input_shape), jnp.float32))
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes['params']) if len(leaf.shape) > 1)


def finished_dense_directory(cell: Cell, workdir: pathlib.Path) -> pathlib.Path:
  """The folder of the dense cell of ``cell``'s seed; ``MissingDenseRun`` (one line) while it is unfinished."""
  dense = Cell(DENSE, 0.0, cell.seed)
  if not is_finished(dense, workdir):
    raise after_training.MissingDenseRun(
        f'{cell} prunes the trained dense network of seed {cell.seed}, but the dense cell {dense.directory(workdir)} '
        'has not finished: run it first (sweep.py runs it before the other cells of its seed; printed commands: '
        'its train.py command)')
  return dense.directory(workdir)


def previous_round(cell: Cell) -> Cell | None:
  """The cell of the round an iterative reference's cell prunes further; None for the first round and others."""
  previous = iterative_rewinding.previous_round_sparsity(cell.sparsity)
  iterative = after_training.is_iterative(cell.criterion)
  return Cell(cell.criterion, previous, cell.seed) if iterative and previous is not None else None


def run_cell(cell: Cell, config: ml_collections.ConfigDict, workdir: pathlib.Path) -> float:
  """Run the cell (resuming what a killed run left), write ``cell.json`` and its results; return its seconds.

  A round of the iterative reference first runs the unfinished rounds before it (each its own cell, its own seconds).
  """
  cell_dir = cell.directory(workdir)
  if (previous := previous_round(cell)) is not None and not is_finished(previous, workdir):
    log.info('sweep: %s prunes the round at %.4f%% sparsity, which has not finished: running it first (%s)', cell,
             100 * previous.sparsity, previous.directory(workdir))
    run_cell(previous, cell_config(config, previous), workdir)
  start = time.perf_counter()
  if cell.is_dense:
    final = experiment.train_and_evaluate(config, cell_dir)
    results = {'criterion': DENSE, 'sparsity': 0.0, 'weight_sparsity': 0.0,
               'kept_weights': prunable_weights(config), DENSE: final}
  else:
    try:
      if after_training.is_iterative(cell.criterion):
        iterative_rewinding.run_round(config, cell_dir, finished_dense_directory(cell, workdir),
                                      None if previous is None else previous.directory(workdir))
      elif after_training.is_reference(cell.criterion):
        after_training.run_reference(config, cell_dir, finished_dense_directory(cell, workdir))
      else:
        experiment.prune_and_train(config, cell_dir)
      results = None
    except masks_lib.LayerCollapseError as error:  # a result of the criterion, not a failure of the sweep
      log.warning('sweep: %s: layer collapse, recorded as such (%s)', cell, error)
      results = {'criterion': cell.criterion, 'sparsity': cell.sparsity, 'collapsed': str(error),
                 'kept_weights': None, 'weight_sparsity': None}
  seconds = time.perf_counter() - start
  if jax.process_index() == 0:
    files.write_json(cell_dir / CELL_FILE, {'seconds': seconds})
    if results is not None:
      files.write_json(cell_dir / RESULTS_FILE, results)  # last: it marks the cell finished
  return seconds
