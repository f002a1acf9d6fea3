"""grain input pipelines: endless shuffled training batches and padded evaluation batches.

Each process reads only its slice of every global batch (``GlobalBatchSampler``),
so every process yields the same number of batches and the global batches do not
depend on the number of processes. The data position is a function of the step:
a resumed run passes ``start_step`` and continues the data order.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import grain
import jax
import numpy as np

from prospr_jax.data import transforms
from prospr_jax.data.info import DatasetInfo
from prospr_jax.data.sampler import GlobalBatchSampler
from prospr_jax.data.sources import ArraySource
from prospr_jax.runtime import sharding


def _record_transforms(info: DatasetInfo, train: bool) -> list[Any]:
  ops: list[Any] = []
  if info.augmentation == 'imagenet':
    ops.append(transforms.RandomResizedCrop(info.image_size) if train else transforms.ResizeCenterCrop(info.image_size))
  elif info.augmentation == 'crop_flip' and train:
    ops.append(transforms.RandomCropFlip(padding=4))
  ops.append(transforms.Normalize(info.mean, info.std))
  return ops


def steps_per_epoch(num_records: int, global_batch_size: int) -> int:
  """Full global batches per pass over the data (the remainder is dropped)."""
  steps = num_records // global_batch_size
  if steps == 0:
    raise ValueError(f'{num_records} records cannot fill one batch of {global_batch_size}: lower the batch size')
  return steps


def _gathered(source: Sequence[Any], info: DatasetInfo, train: bool) -> bool:
  """Whether whole batches can be gathered from memory and normalised at once: an in-memory source whose records
  need no per-record randomness or resizing. The batches equal the per-record pipeline's, bit for bit."""
  return isinstance(source, ArraySource) and (info.augmentation == 'none' or (
      not train and info.augmentation == 'crop_flip'))


def _gathered_train_batches(source: ArraySource, info: DatasetInfo,
                            sampler: GlobalBatchSampler) -> Iterator[dict[str, np.ndarray]]:
  normalize = transforms.Normalize(info.mean, info.std)
  for step in itertools.count():
    keys = sampler.record_keys(step, jax.process_index())
    yield normalize.map({'image': source.images[keys], 'label': source.labels[keys]})


def train_loader(info: DatasetInfo, source: Sequence[Any], *, global_batch_size: int, seed: int,
                 start_step: int = 0, worker_count: int = 0, augment: bool = True) -> Iterable[dict[str, np.ndarray]]:
  """This process's share of endless training batches from ``start_step`` on, reshuffled every epoch.

  A grain ``DataLoader`` over the records; for in-memory data without augmentation, the same batches gathered
  whole (far faster for small images; ``worker_count`` is then unused).
  """
  processes = jax.process_count()
  sampler = GlobalBatchSampler(len(source), global_batch_size, processes, seed=seed, start_step=start_step)
  if _gathered(source, info, train=augment):
    return _Restartable(lambda: _gathered_train_batches(source, info, sampler))
  ops = _record_transforms(info, train=augment)
  ops.append(grain.transforms.Batch(sharding.local_batch_size(global_batch_size), drop_remainder=True))
  shards = grain.sharding.ShardOptions(shard_index=jax.process_index(), shard_count=processes, drop_remainder=True)
  return grain.DataLoader(data_source=source, sampler=sampler, operations=ops, worker_count=worker_count,
                          shard_options=shards)


def eval_batches(info: DatasetInfo, source: Sequence[Any], *, global_batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """This process's share of the evaluation set in order, padded to full batches; ``'weight'`` is 0 on padding."""
  local = sharding.local_batch_size(global_batch_size)
  process, processes = jax.process_index(), jax.process_count()
  indices = range(process, len(source), processes)
  num_batches = math.ceil(math.ceil(len(source) / processes) / local)  # the same on every process
  if _gathered(source, info, train=False):
    yield from _gathered_eval_batches(source, info, np.asarray(indices), local, num_batches)
    return
  dataset = grain.MapDataset.source(source)[process::processes]
  for op in _record_transforms(info, train=False):
    dataset = dataset.map(op)
  records = iter(dataset.to_iter_dataset())
  for b in range(num_batches):
    rows = [next(records) for _ in range(max(0, min(local, len(indices) - b * local)))]
    weight = np.zeros(local, np.float32)
    weight[:len(rows)] = 1.0
    template = rows[0] if rows else {'image': np.zeros(info.input_shape, np.float32), 'label': np.int32(0)}
    rows += [template] * (local - len(rows))
    yield {'image': np.stack([r['image'] for r in rows]), 'label': np.stack([r['label'] for r in rows]),
           'weight': weight}


def _gathered_eval_batches(source: ArraySource, info: DatasetInfo, indices: np.ndarray, local: int,
                           num_batches: int) -> Iterator[dict[str, np.ndarray]]:
  normalize = transforms.Normalize(info.mean, info.std)
  for b in range(num_batches):
    keys = indices[b * local:(b + 1) * local]
    weight = np.zeros(local, np.float32)
    weight[:len(keys)] = 1.0
    keys = np.concatenate([keys, np.full(local - len(keys), keys[0] if len(keys) else 0)])
    yield {**normalize.map({'image': source.images[keys], 'label': source.labels[keys]}), 'weight': weight}


class _Restartable:
  """An iterable whose every ``iter()`` starts the batches afresh from the loader's start, like grain's."""

  def __init__(self, make: Callable[[], Iterator[dict[str, np.ndarray]]]):
    self._make = make

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self._make()
