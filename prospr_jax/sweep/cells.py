"""One cell of a sweep: run it as a normal experiment in its own workdir, tell whether it finished, read its row.

A cell is finished when its recorded ``config.json`` is the sweep's cell config
(up to how it runs) and its ``results.json`` exists: ``prune_and_train`` writes
it last, and the sweep writes one for the dense cell, and one for a cell whose
mask leaves no path from input to output (layer collapse) or whose training diverged (each recorded as the cell's
result). A dense cell trained by a bare ``train.py`` has none; it is finished when its
``metrics.jsonl`` reaches ``num_epochs``. A cell folder holding a run of another
config is refused (``ForeignCellError``, naming the cell and the fields), except
one trained for fewer epochs, which the sweep trains on.

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
import logging
import math
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import jaxlib
import ml_collections

from prospr_jax import data, files, models, topk
from prospr_jax.harness import experiment, train_loop
from prospr_jax.runtime import workdir as workdir_lib
from prospr_jax.sweep import after_training, iterative_rewinding
from prospr_jax.sweep.grid import DENSE, Cell, cell_config

RESULTS_FILE = experiment.RESULTS_FILE
CELL_FILE = 'cell.json'
METRICS_FILE = 'metrics.jsonl'
log = logging.getLogger(__name__)


class ForeignCellError(workdir_lib.WorkdirError):
  """A cell's folder holds a run of another config than the sweep's cell; the message names the cell and fields."""


def _rerun(cell_dir: pathlib.Path) -> str:
  return f'delete {cell_dir} and rerun the sweep to run the cell again'


def _read_json(path: pathlib.Path, cell_dir: pathlib.Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
  return files.read_json(path, required=required, fix=_rerun(cell_dir)) if path.exists() else {}


def has_sweep_config(cell: Cell, cell_dir: pathlib.Path, base: ml_collections.ConfigDict) -> bool:
  """Whether the cell's recorded config (if any) is the sweep's cell config up to how it runs; False for one that
  only trains fewer epochs (the sweep trains it on); ``ForeignCellError`` for any other difference."""
  recorded = _read_json(cell_dir / workdir_lib.CONFIG_FILE, cell_dir, ('num_epochs',))
  if not recorded:
    return True
  current = cell_config(base, cell).to_dict()
  fields = [key for key in workdir_lib.differing_fields(recorded, current) if key not in workdir_lib.HOW_TO_RUN]
  if fields == ['num_epochs'] and recorded['num_epochs'] < current['num_epochs']:
    return False
  if fields:
    raise ForeignCellError(f'{cell}: {cell_dir} holds a run of another config than this sweep\'s cell '
                           f'({workdir_lib.describe(fields, recorded, current)}); so its result is not this sweep\'s: '
                           f'{_rerun(cell_dir)} with the sweep\'s config, or run the sweep with that config')
  return True


def _completed_training(cell_dir: pathlib.Path) -> dict[str, Any] | None:
  """The last metrics row of a ``train.py`` run in ``cell_dir`` once it reached ``num_epochs``, else None."""
  metrics, config = cell_dir / METRICS_FILE, cell_dir / workdir_lib.CONFIG_FILE
  if not (metrics.exists() and config.exists()):
    return None
  rows = [files.parse_json_line(line, metrics, number, fix=_rerun(cell_dir))
          for number, line in enumerate(metrics.read_text().splitlines(), 1) if line.strip()]
  epochs = _read_json(config, cell_dir, ('num_epochs',))['num_epochs']
  return rows[-1] if rows and rows[-1].get('epoch', 0) >= epochs else None


# Outcomes recorded in place of accuracies, each counted at chance in the tables: the mask left no path from the input
# to the output (layer collapse), or the training loss became NaN or infinite.
AT_CHANCE = ('collapsed', 'diverged')


def at_chance(results: dict[str, Any]) -> dict[str, str]:
  """The ``AT_CHANCE`` outcome of a cell's results or row, e.g. ``{'collapsed': '<why>'}``; ``{}`` for a trained one."""
  return {key: results[key] for key in AT_CHANCE if results.get(key)}


def _outcome_results(cell: Cell, outcome: str, error: Exception) -> dict[str, Any]:
  """The ``results.json`` of a cell whose ``AT_CHANCE`` outcome replaced its accuracies."""
  return {'criterion': cell.criterion, 'sparsity': cell.sparsity, outcome: str(error), 'kept_weights': None,
          'weight_sparsity': None}


def final_results(cell: Cell, workdir: pathlib.Path,
                  base: ml_collections.ConfigDict) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
  """``(results, final eval row)`` of a finished cell (None for a collapsed or diverged one's), None for an unfinished
  one."""
  cell_dir = cell.directory(workdir)
  if not has_sweep_config(cell, cell_dir, base):
    return None
  results = _read_json(cell_dir / RESULTS_FILE, cell_dir)
  if results:
    final = None if at_chance(results) else results.get('pruned') or results.get(DENSE)
    if not at_chance(results) and not (isinstance(final, dict) and {'eval_top1', 'eval_top5'} <= set(final)):
      raise files.UnreadableFileError(f'{cell_dir / RESULTS_FILE} holds no final top-1 and top-5: it is corrupt or '
                                      f'not a cell\'s results; {_rerun(cell_dir)}')
    return results, final
  final = _completed_training(cell_dir) if cell.is_dense else None
  return None if final is None else ({'weight_sparsity': 0.0}, final)


def is_finished(cell: Cell, workdir: pathlib.Path, base: ml_collections.ConfigDict) -> bool:
  """Whether ``cell`` of the sweep of ``base`` has its final result (refusing a folder of another config)."""
  return final_results(cell, workdir, base) is not None


def config_hash(cell_dir: pathlib.Path) -> str:
  """The first 12 hex digits of the sha256 of the cell's recorded ``config.json``."""
  return hashlib.sha256((cell_dir / workdir_lib.CONFIG_FILE).read_bytes()).hexdigest()[:12]


def cell_row(cell: Cell, workdir: pathlib.Path, base: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """The ``results.jsonl`` row of a finished cell (accuracies as fractions, times in seconds), else None."""
  cell_dir = cell.directory(workdir)
  finished = final_results(cell, workdir, base)
  if finished is None:
    return None
  results, final = finished
  final = final or {'eval_top1': None, 'eval_top5': None}
  pruning = _read_json(cell_dir / 'pruning.json', cell_dir)
  pruning_seconds = pruning.get('seconds')
  cell_record = _read_json(cell_dir / CELL_FILE, cell_dir)
  cell_seconds = cell_record.get('seconds')
  training_seconds = None if cell_seconds is None else cell_seconds - (pruning_seconds or 0.0)
  recorded = _read_json(cell_dir / workdir_lib.CONFIG_FILE, cell_dir)
  prune = recorded.get('prune', {})
  scored = not (cell.is_dense or after_training.is_reference(cell.criterion))  # references prune trained weights
  scoring = {'precision': prune.get('precision', 'float32'),  # how the mask was computed: precision, convolution
             'scoring_conv': prune.get('conv_impl') or recorded.get('conv_impl')} if scored else {}
  kept = results.get('kept_weights')
  if kept is None and cell.is_dense:  # a dense cell trained by a bare train.py keeps all
    kept = prunable_weights(base)
  return {'config_hash': config_hash(cell_dir), 'criterion': cell.criterion, 'sparsity': cell.sparsity,
          'seed': cell.seed, 'kept_weights': kept,
          'weight_sparsity': results.get('weight_sparsity'), 'top1': final['eval_top1'], 'top5': final['eval_top5'],
          'pruning_seconds': pruning_seconds, 'training_seconds': training_seconds, 'cell_seconds': cell_seconds,
          'cell': str(cell_dir.relative_to(workdir)), **scoring, **at_chance(results),
          **({'emptied_layers': pruning['emptied_layers']} if pruning.get('emptied_layers') else {}),
          **({'ran_on': cell_record['ran_on']} if cell_record.get('ran_on') else {})}


def environment() -> dict[str, str]:
  """What computes this process's cells: the JAX and jaxlib versions, the backend and the device kind."""
  return {'jax': jax.__version__, 'jaxlib': jaxlib.__version__, 'backend': jax.default_backend(),
          'device': jax.devices()[0].device_kind}


def prunable_weights(config: ml_collections.ConfigDict) -> int:
  """The number of prunable weights (kernels: ``ndim > 1``) of the config's model, from shapes alone."""
  info = data.get_dataset_info(config.dataset)
  model = models.build_model(config.model, info.num_classes, config.model_kwargs, config.conv_impl)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jax.ShapeDtypeStruct((1, *info.input_shape), jnp.float32))
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes['params']) if len(leaf.shape) > 1)


def finished_dense_directory(cell: Cell, workdir: pathlib.Path, base: ml_collections.ConfigDict) -> pathlib.Path:
  """The folder of the dense cell of ``cell``'s seed; ``MissingDenseRun`` (one line) while it is unfinished."""
  dense = Cell(DENSE, 0.0, cell.seed)
  if not is_finished(dense, workdir, base):
    raise after_training.MissingDenseRun(
        f'{cell} prunes the trained dense network of seed {cell.seed}, but the dense cell {dense.directory(workdir)} '
        'has not finished: run it first (sweep.py runs it before the other cells of its seed; printed commands: '
        'its --only_cell command)')
  return dense.directory(workdir)


def previous_round(cell: Cell) -> Cell | None:
  """The cell of the round an iterative reference's cell prunes further; None for the first round and others."""
  previous = iterative_rewinding.previous_round_sparsity(cell.sparsity)
  iterative = after_training.is_iterative(cell.criterion)
  return Cell(cell.criterion, previous, cell.seed) if iterative and previous is not None else None


def run_cell(cell: Cell, base: ml_collections.ConfigDict, workdir: pathlib.Path) -> float:
  """Run the cell of the sweep of ``base`` (resuming what a stopped run left), write its results; return the
  seconds of this process. ``cell.json`` holds the seconds of every process that ran the cell, stopped ones too
  (except one killed outright, which writes nothing). A round of the iterative reference first runs the unfinished
  rounds before it (each its own cell, its own seconds)."""
  cell_dir, config = cell.directory(workdir), cell_config(base, cell)
  if (previous := previous_round(cell)) is not None and not is_finished(previous, workdir, base):
    log.info('sweep: %s prunes the round at %.4f%% sparsity, which has not finished: running it first (%s)', cell,
             100 * previous.sparsity, previous.directory(workdir))
    run_cell(previous, base, workdir)
  recorded = _read_json(cell_dir / CELL_FILE, cell_dir)
  before, ran_on, here = recorded.get('seconds') or 0.0, recorded.get('ran_on', []), environment()
  ran_on += [here] if here not in ran_on else []
  start, results = time.perf_counter(), None
  try:
    if cell.is_dense:
      final = experiment.train_and_evaluate(config, cell_dir)
      results = {'criterion': DENSE, 'sparsity': 0.0, 'weight_sparsity': 0.0,
                 'kept_weights': prunable_weights(config), DENSE: final}
    else:
      try:
        if after_training.is_iterative(cell.criterion):
          iterative_rewinding.run_round(config, cell_dir, finished_dense_directory(cell, workdir, base),
                                        None if previous is None else previous.directory(workdir))
        elif after_training.is_reference(cell.criterion):
          after_training.run_reference(config, cell_dir, finished_dense_directory(cell, workdir, base))
        else:
          experiment.prune_and_train(config, cell_dir)
      except topk.LayerCollapseError as error:  # a result of the criterion, not a failure of the sweep
        log.warning('sweep: %s: layer collapse, recorded as such (%s)', cell, error)
        results = _outcome_results(cell, 'collapsed', error)
  except train_loop.TrainingDiverged as error:  # a result of the recipe on this network, as a collapse
    log.warning('sweep: %s: training diverged, recorded as such (%s)', cell, error)
    results = _outcome_results(cell, 'diverged', error)
  finally:
    seconds = time.perf_counter() - start
    if jax.process_index() == 0 and cell_dir.is_dir():
      files.write_json(cell_dir / CELL_FILE, {'seconds': before + seconds, 'ran_on': ran_on})
  if jax.process_index() == 0 and results is not None:
    files.write_json(cell_dir / RESULTS_FILE, results)  # last: it marks the cell finished
  return seconds
