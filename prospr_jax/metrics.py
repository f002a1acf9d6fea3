"""Metrics as JSON lines, one row per epoch, written by process 0 only."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax


class MetricsWriter:
  """Append rows to ``metrics.jsonl``; on resume, rows of epochs after the checkpoint are dropped."""

  def __init__(self, path: str | os.PathLike[str]):
    self.path = pathlib.Path(path)

  def rows(self) -> list[dict[str, Any]]:
    if not self.path.exists():
      return []
    return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

  def truncate_after(self, epoch: int) -> None:
    """Forget rows past ``epoch`` (written after the checkpoint a resumed run starts from)."""
    if jax.process_index() == 0 and self.path.exists():
      kept = [row for row in self.rows() if row['epoch'] <= epoch]
      self.path.write_text(''.join(json.dumps(row) + '\n' for row in kept))

  def write(self, row: dict[str, Any]) -> None:
    if jax.process_index() == 0:
      with self.path.open('a') as f:
        f.write(json.dumps(row) + '\n')
