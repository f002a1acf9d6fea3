"""Metrics, one row per epoch, written by process 0 only: ``metrics.jsonl`` and TensorBoard event files.

``tensorboard --logdir <workdir>`` then shows every network of a run (and every
run of a sweep under one folder) side by side. A row is on disk, in both, when
``write`` returns (events are written in this thread, not queued), so a
checkpoint saved after it never outlives it. On resume, rows and events past
the restored step are dropped, so a curve never holds a step twice.
"""

from __future__ import annotations

import math
import os
import pathlib
import time
import uuid
from typing import Any

import jax
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.summary import scalar

from prospr_jax import files


class MetricsWriter:
  """Append rows to ``<directory>/metrics.jsonl`` and scalars to TensorBoard events in ``directory``."""

  def __init__(self, directory: str | os.PathLike[str]):
    self.directory = pathlib.Path(directory)
    self.path = self.directory / 'metrics.jsonl'
    self._events: EventsWriter | None = None

  def rows(self) -> list[dict[str, Any]]:
    if not self.path.exists():
      return []
    fix = f'delete it and the checkpoints beside it to retrain ({self.directory})'
    return [files.parse_json_line(line, self.path, number, fix=fix)
            for number, line in enumerate(self.path.read_text().splitlines(), 1) if line.strip()]

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
        self._events.write_event(Event(wall_time=time.time(), step=row['step'], summary=scalar(key, value)))
    self._events.flush()

  def _event_writer(self, purge_step: int | None = None) -> EventsWriter:
    """A new event file (what tensorboardX's SummaryWriter writes, without its queue and thread); with
    ``purge_step``, TensorBoard drops the earlier files' events from that step on."""
    # A unique suffix: two writers started in the same second must not share a file name.
    events = EventsWriter(str(self.directory / 'events'), filename_suffix=f'.{os.getpid()}.{uuid.uuid4().hex[:6]}')
    if purge_step is not None:
      events.write_event(Event(wall_time=time.time(), step=purge_step, file_version='brain.Event:2'))
      events.write_event(Event(wall_time=time.time(), step=purge_step, session_log=SessionLog(status=SessionLog.START)))
    events.flush()
    return events

  def _write_rows(self, rows: list[dict[str, Any]]) -> None:
    """The whole file, atomically: a kill never leaves half a line (a few hundred rows at most)."""
    files.write_text(self.path, ''.join(files.json_dumps(row) + '\n' for row in rows))

  def close(self) -> None:
    self._close_events()

  def _close_events(self) -> None:
    if self._events is not None:
      self._events.close()
      self._events = None
