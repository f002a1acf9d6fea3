"""Global-batch sampling: the same global batches, in the same order, on any number of processes.

Global position ``j`` of the endless stream is record ``shuffle_e(j mod N)`` of
epoch ``e = j // N`` (reshuffled every epoch from the seed); global batch ``b``
is positions ``[b * G, (b + 1) * G)``, and process ``p`` of ``P`` reads the
contiguous slice ``[b * G + p * L, b * G + (p + 1) * L)`` with ``L = G / P``.
Augmentation randomness is seeded by ``j`` too, so a run's data depend on the
seed and the step, not on the topology. The position after ``s`` steps is
``s * G``: that is all a checkpoint needs to continue the data order.
"""

from __future__ import annotations

import sys

import grain
import numpy as np

from prospr_jax.runtime import sharding


class GlobalBatchSampler:
  """A grain sampler over global positions, read by a ``DataLoader`` sharded over processes.

  grain's ``DataLoader`` with ``ShardOptions(p, P)`` asks for sampler index
  ``k = i * P + p`` for this process's ``i``-th record; we map it to its global position.
  """

  def __init__(self, num_records: int, global_batch_size: int, num_processes: int, *, seed: int,
               start_step: int = 0):
    self._num_records, self._global, self._processes = num_records, global_batch_size, num_processes
    self._local = sharding.local_batch_size(global_batch_size, devices=1, processes=num_processes)
    self._seed, self._offset = seed, start_step * global_batch_size
    self._order = grain.MapDataset.range(num_records).shuffle(seed=seed)

  def __len__(self) -> int:
    return sys.maxsize

  def __repr__(self) -> str:
    return (f'GlobalBatchSampler(num_records={self._num_records}, global_batch_size={self._global}, '
            f'seed={self._seed})')

  def global_position(self, index: int) -> int:
    i, p = divmod(index, self._processes)
    step, within = divmod(i, self._local)
    return self._offset + step * self._global + p * self._local + within

  def record_keys(self, step: int, process: int) -> np.ndarray:
    """The record keys of process ``process``'s slice of global batch ``step`` (counted from ``start_step``)."""
    start = self._offset + step * self._global + process * self._local
    return np.fromiter((self._order[j] for j in range(start, start + self._local)), np.int64, self._local)

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    j = self.global_position(index)
    key = self._order[j]  # grain's shuffle reshuffles every pass over the records
    rng = np.random.Generator(np.random.Philox(key=self._seed + j))
    return grain.RecordMetadata(index=index, record_key=key, rng=rng)
