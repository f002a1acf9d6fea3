"""Metrics, one row per epoch, written by process 0 only: ``metrics.jsonl`` and TensorBoard event files.

``tensorboard --logdir <workdir>`` then shows every network of a run (and every
run of a sweep under one folder) side by side. On resume, rows and events past
the restored step are dropped, so a curve never holds a step twice.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import uuid
from typing import Any

import jax
import tensorboardX

from prospr_jax import files


class MetricsWriter:
  """Append rows to ``<directory>/metrics.jsonl`` and scalars to TensorBoard events in ``directory``."""

  def __init__(self, directory: str | os.PathLike[str]):
    self.directory = pathlib.Path(directory)
    self.path = self.directory / 'metrics.jsonl'
    self._events: tensorboardX.SummaryWriter | None = None

  def rows(self) -> list[dict[str, Any]]:
    if not self.path.exists():
      return []
    return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

  def truncate_after(self, step: int) -> None:
    """Forget rows (and TensorBoard events) past ``step``, written after the checkpoint a run resumes from.

    ``step`` is 0 when there is no checkpoint: then every row goes.
    """
    if jax.process_index() != 0:
      return
    if self.path.exists():
      self._write_rows([row for row in self.rows() if row['step'] <= step])
    self._close_events()
    self._events = self._event_writer(purge_step=step + 1)

  def write(self, row: dict[str, Any]) -> None:
    """One row: a JSON line, and each number as a TensorBoard scalar at ``row['step']``."""
    if jax.process_index() != 0:
      return
    self._write_rows(self.rows() + [row])
    if self._events is None:
      self._events = self._event_writer()
    for key, value in row.items():
      if key not in ('epoch', 'step') and isinstance(value, (int, float)) and math.isfinite(value):
        self._events.add_scalar(key, value, global_step=row['step'])
    self._events.flush()

  def _event_writer(self, purge_step: int | None = None) -> tensorboardX.SummaryWriter:
    # A unique suffix: two writers started in the same second must not share a file name.
    return tensorboardX.SummaryWriter(str(self.directory), purge_step=purge_step,
                                      filename_suffix=f'.{os.getpid()}.{uuid.uuid4().hex[:6]}')

  def _write_rows(self, rows: list[dict[str, Any]]) -> None:
    """The whole file, atomically: a kill never leaves half a line (a few hundred rows at most)."""
    files.write_text(self.path, ''.join(files.json_dumps(row) + '\n' for row in rows))

  def close(self) -> None:
    self._close_events()

  def _close_events(self) -> None:
    if self._events is not None:
      self._events.close()
      self._events = None
