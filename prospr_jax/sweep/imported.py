"""Continue a sweep on another machine from its committed results folder (``sweep.json`` + ``results.jsonl``).

A results folder keeps one row per finished cell but none of the cell folders,
so a new machine would run every cell again. ``import_results`` writes each
row back as a finished cell's record (``config.json``, ``results.json``,
``cell.json``, ``pruning.json``; no checkpoints), after proving that the row
was trained with this sweep's config: the row's ``config_hash`` must be the
hash of the cell's recorded config (``<folder>/<row cell>/config.json`` where
the folder keeps it, else the cell config built from the folder's recorded
base), and that config must be this sweep's cell config up to how it runs, as
a rerun in the same workdir would require. (The recorded file, not a rebuilt
one, because a config field added by a later version changes the bytes.)
Aggregating then gives back the same rows; the sweep runs only the cells left.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from typing import Any

import jax
import ml_collections

from prospr_jax import files
from prospr_jax.runtime import workdir as workdir_lib
from prospr_jax.sweep import cells as cells_lib, record
from prospr_jax.sweep.grid import DENSE, Cell, Grid, cell_config

ROWS_FILE = 'results.jsonl'
# What every row must hold (``cells.cell_row`` writes these and the timings, which may be null).
ROW_KEYS = ('config_hash', 'criterion', 'sparsity', 'seed', 'kept_weights', 'weight_sparsity', 'top1', 'top5')
IMPORTED_FROM = 'imported_from'


class ResultsImportError(ValueError):
  """A row of the results folder cannot be imported; the message names the row and the way out."""


@dataclasses.dataclass(frozen=True)
class ImportOutcome:
  imported: int  # cells written as finished
  already: int  # rows whose cell had finished here already (left as they are)


def _config_text(config: ml_collections.ConfigDict) -> str:
  """The bytes a run records as its ``config.json`` (``workdir.check_config``), so their hash is the row's."""
  return files.json_dumps(config.to_dict(), indent=2) + '\n'


def _hash(text: str) -> str:
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def read_rows(folder: pathlib.Path) -> tuple[dict[str, Any], Grid, list[tuple[int, Any]]]:
  """The folder's recorded base config, grid and ``(line number, row)``s; a clear error when a file is missing or a
  line is no JSON."""
  recorded = record.read_sweep(folder)
  rows_path = folder / ROWS_FILE
  if recorded is None or not rows_path.exists():
    raise ResultsImportError(f'--import_results: {folder} needs both {record.SWEEP_FILE} and {ROWS_FILE} (the files a '
                             'sweep writes in its --workdir, e.g. results/<name>/)')
  fix = 'fix or remove that row'
  rows = [(number, files.parse_json_line(line, rows_path, number, fix=fix))
          for number, line in enumerate(rows_path.read_text().splitlines(), 1) if line.strip()]
  return recorded[0], recorded[1], rows


def check_row(row: Any, number: int, rows_path: pathlib.Path) -> Cell:
  """The cell of a row that holds every key with a value of its kind; ``ResultsImportError`` naming the row."""
  where = f'--import_results: row {number} of {rows_path}'
  if not isinstance(row, dict):
    raise ResultsImportError(f'{where} is not a JSON object: fix or remove that row')
  missing = [key for key in ROW_KEYS if key not in row]
  if missing:
    raise ResultsImportError(f'{where} lacks {", ".join(missing)}: a sweep writes every one; fix or remove that row')
  try:
    cell = Cell(row['criterion'], float(row['sparsity']), int(row['seed']))
  except (TypeError, ValueError):
    raise ResultsImportError(f'{where} has no readable criterion, sparsity and seed: fix or remove that row') from None
  if not isinstance(row.get('cell', ''), str):
    raise ResultsImportError(f'{where} ({cell}) has cell {row["cell"]!r}, not a folder name: fix or remove that row')
  accuracies = {key: row[key] for key in ('top1', 'top5')}
  fractions = all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0
                  for v in accuracies.values())
  if not (fractions or (cells_lib.at_chance(row) and all(v is None for v in accuracies.values()))):
    raise ResultsImportError(f'{where} ({cell}) has top1 {row["top1"]!r} and top5 {row["top5"]!r}: accuracies are '
                             'fractions in [0, 1] (null only for a collapsed or diverged cell); fix or remove that row')
  return cell


def _results_record(cell: Cell, row: dict[str, Any], source: str) -> dict[str, Any]:
  """The ``results.json`` from which ``cells.cell_row`` rebuilds ``row``."""
  if outcome := cells_lib.at_chance(row):
    return {'criterion': cell.criterion, 'sparsity': cell.sparsity, **outcome, 'kept_weights': None,
            'weight_sparsity': None, IMPORTED_FROM: source}
  final = {'eval_top1': row['top1'], 'eval_top5': row['top5']}
  return {'criterion': cell.criterion, 'sparsity': cell.sparsity, 'weight_sparsity': row['weight_sparsity'],
          'kept_weights': row['kept_weights'], DENSE if cell.is_dense else 'pruned': final, IMPORTED_FROM: source}


def _planned_cells(config: ml_collections.ConfigDict, base: ml_collections.ConfigDict, grid: Grid,
                   rows: list[tuple[int, Any]], folder: pathlib.Path,
                   workdir: pathlib.Path) -> list[tuple[Cell, str, dict[str, Any]]]:
  """``(cell, config text, row)`` for every row to write; refuses the whole import on any row that does not fit."""
  planned, cells, seen = [], set(grid.cells()), {}
  for number, row in rows:  # every row's values first: a bad one is named, not its neighbour's hash
    cell = check_row(row, number, folder / ROWS_FILE)
    if cell in seen:
      raise ResultsImportError(f'--import_results: rows {seen[cell]} and {number} of {folder / ROWS_FILE} are both '
                               f'{cell}: a cell has one row; remove one of them')
    seen[cell] = number
  for (number, row), cell in zip(rows, seen):
    if cell not in cells:
      raise ResultsImportError(f'--import_results: row {number} of {folder / ROWS_FILE} is {cell}, not a cell of the '
                               f'sweep in {workdir}: add its criterion, sparsity and seed to the flags')
    kept = folder / row.get('cell', '') / workdir_lib.CONFIG_FILE
    source = kept if row.get('cell') and kept.exists() else folder / record.SWEEP_FILE
    text = kept.read_text() if source == kept else _config_text(cell_config(base, cell))
    if _hash(text) != row['config_hash']:
      raise ResultsImportError(f'--import_results: row {number} of {folder / ROWS_FILE} ({cell}) has config hash '
                               f'{row["config_hash"]}, but its config from {source} hashes to {_hash(text)}: the '
                               'row was not trained with that config; remove the row or the folder')
    differing = [key for key in workdir_lib.differing_fields(json.loads(text), cell_config(config, cell).to_dict())
                 if key not in workdir_lib.HOW_TO_RUN]
    if differing:
      raise ResultsImportError(f'--import_results: row {number} of {folder / ROWS_FILE} ({cell}) was trained with '
                               f'other {", ".join(differing)} than this sweep\'s cell; import it with that config')
    cell_dir = cell.directory(workdir)
    recorded = cell_dir / workdir_lib.CONFIG_FILE
    if not cells_lib.is_finished(cell, workdir, config) and recorded.exists() and recorded.read_text() != text:
      raise ResultsImportError(f'--import_results: {cell_dir} holds an unfinished run of another config than row '
                               f'{number} of {folder / ROWS_FILE}: delete that folder to import the row, or leave '
                               'the row out')
    planned.append((cell, text, row))
  return planned


def import_results(config: ml_collections.ConfigDict, grid: Grid, folder: str | pathlib.Path,
                   workdir: str | pathlib.Path) -> ImportOutcome:
  """Write the finished cells of ``folder`` (a sweep's results) into the sweep ``workdir`` runs; all or nothing.

  The grid recorded in ``workdir`` grows to hold the folder's grid too, so its rows are cells of the sweep.
  """
  folder, workdir = pathlib.Path(folder), pathlib.Path(workdir)
  base_dict, folder_grid, rows = read_rows(folder)
  try:
    record.check_same_base(folder, base_dict, config.to_dict())  # the same experiment as this sweep
  except record.SweepConfigError as error:
    raise ResultsImportError(f'--import_results: {error}'.split('; its cells belong')[0] + ': its rows are not cells '
                             'of this sweep; import them with that config') from error
  recorded = record.read_sweep(workdir)
  grid = grid.union(folder_grid) if recorded is None else recorded[1].union(grid).union(folder_grid)
  planned = _planned_cells(config, ml_collections.ConfigDict(base_dict), grid, rows, folder, workdir)
  record.record_sweep(workdir, config, grid)  # only once every row is proven: a refused import writes nothing
  imported = already = 0
  for cell, text, row in planned:
    if cells_lib.is_finished(cell, workdir, config):
      already += 1
      continue
    imported += 1
    if jax.process_index() != 0:
      continue
    cell_dir = cell.directory(workdir)
    cell_dir.mkdir(parents=True, exist_ok=True)
    files.write_text(cell_dir / workdir_lib.CONFIG_FILE, text)
    if row.get('pruning_seconds') is not None or row.get('emptied_layers'):
      files.write_json(cell_dir / 'pruning.json', {'seconds': row.get('pruning_seconds'),
                                                   **{k: row[k] for k in ('emptied_layers',) if row.get(k)}})
    if row.get('cell_seconds') is not None or row.get('ran_on'):
      files.write_json(cell_dir / cells_lib.CELL_FILE, {'seconds': row.get('cell_seconds'),
                                                        **{k: row[k] for k in ('ran_on',) if row.get(k)}})
    files.write_json(cell_dir / cells_lib.RESULTS_FILE, _results_record(cell, row, str(folder)))  # last: finished
  return ImportOutcome(imported, already)
