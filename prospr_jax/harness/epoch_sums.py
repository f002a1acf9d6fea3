"""The epoch so far: each train step's loss and accuracy (device arrays, read at the epoch's end) and its seconds.

A dispatch of several steps adds their values as one array; the epoch's mean is over the steps, in step order,
whatever the chunks. A mid-epoch checkpoint carries them, so a resumed epoch reports the whole epoch.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from prospr_jax.runtime import sharding


@dataclasses.dataclass
class EpochSums:
  """The epoch so far: per-step train loss and accuracy (arrays, read at the epoch's end) and its seconds."""
  loss: list
  accuracy: list
  start: float

  @classmethod
  def empty(cls, seconds_before: float = 0.0) -> EpochSums:
    return cls([], [], time.perf_counter() - seconds_before)

  def add(self, step_metrics: dict[str, jax.Array]) -> None:
    self.loss.append(step_metrics['loss'])
    self.accuracy.append(step_metrics['accuracy'])

  def values(self, name: str) -> np.ndarray:
    """One value per step so far, in step order (host numpy)."""
    parts = [np.atleast_1d(v) for v in sharding.host_value(getattr(self, name))]
    return np.concatenate(parts) if parts else np.zeros((0,), np.float32)

  def steps(self) -> int:
    return sum(int(np.size(v)) for v in self.loss)

  def seconds(self) -> float:
    return time.perf_counter() - self.start

  def means(self) -> dict[str, float]:
    return {'train_loss': float(np.mean(self.values('loss'))),
            'train_accuracy': float(np.mean(self.values('accuracy')))}

  def to_meta(self) -> dict:
    """The values (with their dtype, so the epoch's mean is computed as without a stop) for a checkpoint's meta."""
    values = {name: self.values(name) for name in ('loss', 'accuracy')}
    return {'epoch_so_far': {**{name: {'dtype': str(v.dtype), 'values': v.tolist()} for name, v in values.items()},
                             'seconds': self.seconds()}}

  @classmethod
  def from_meta(cls, meta: dict) -> EpochSums:
    """The epoch so far recorded in a checkpoint's meta (none at an epoch's end, or in an older checkpoint)."""
    saved = meta.get('epoch_so_far')
    if not saved:
      return cls.empty()
    sums = cls.empty(saved['seconds'])
    sums.loss, sums.accuracy = (list(np.asarray(saved[name]['values'], saved[name]['dtype']))
                                for name in ('loss', 'accuracy'))
    return sums
