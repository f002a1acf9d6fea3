"""Device-resident in-memory datasets: the whole set on the device, shuffled, augmented and batched there.

For a dataset whose augmentation is ``none`` or ``crop_flip`` (digits, MNIST / Fashion-MNIST IDX, CIFAR-10/100
from TFDS, whose records are read into memory once). Step ``s`` of a run with ``S`` steps per epoch reads batch ``i = s mod S`` of epoch
``e = s // S``: records ``permutation(k_e, N)[i G:(i + 1) G]`` with ``k_e = fold_in(key, e)`` (the remainder of
each epoch is dropped); crop-and-flip draws from ``fold_in(fold_in(key, e), i)`` split over the batch. So the
data are a function of the key and the step only: a resumed run, and any number of steps per dispatch, read the
same batches. The order differs from the host pipeline's (``GlobalBatchSampler``), so the mode is part of what
a run computes. Everything is replicated over the mesh; a batch is split over the ``'data'`` axis.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prospr_jax.data.info import DatasetInfo
from prospr_jax.data.sources import ArraySource
from prospr_jax.runtime import sharding

AUGMENTATIONS = ('none', 'crop_flip')


@dataclasses.dataclass(frozen=True)
class Layout:
  """What a batch function needs to know, hashable (a static argument of a jitted function)."""
  num_records: int
  batch_size: int  # global
  steps_per_epoch: int
  augmentation: str
  mean: tuple[float, ...]
  std: tuple[float, ...]


def unsupported(info: DatasetInfo) -> str:
  """Why ``info``'s dataset cannot be held on the device ('' when it can)."""
  if info.augmentation not in AUGMENTATIONS:
    return f'its augmentation {info.augmentation!r} runs on the host only (on the device: {", ".join(AUGMENTATIONS)})'
  return ''


def put(source: Any, mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """The records, as stored (uint8 pixels stay uint8), replicated on every device of ``mesh``; a source that is
  no ``ArraySource`` (a TFDS ``data_source``) is read whole first."""
  if isinstance(source, ArraySource):
    images, labels = source.images, source.labels
  else:
    records = [source[i] for i in range(len(source))]
    images, labels = np.stack([np.asarray(r['image']) for r in records]), [r['label'] for r in records]
  return sharding.replicate({'image': np.asarray(images), 'label': np.asarray(labels, np.int32)}, mesh)


def layout(info: DatasetInfo, source: Any, batch_size: int, steps_per_epoch: int, train: bool) -> Layout:
  return Layout(len(source), batch_size, steps_per_epoch, info.augmentation if train else 'none',
                tuple(map(float, info.mean)), tuple(map(float, info.std)))


def normalize(images: jax.Array, mean: tuple[float, ...], std: tuple[float, ...]) -> jax.Array:
  """``transforms.Normalize`` on the device: pixels to [0, 1], minus the mean, over the std, per channel."""
  pixels = images.astype(jnp.float32) / 255.0
  return (pixels - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def crop_flip(images: jax.Array, key: jax.Array, padding: int = 4) -> jax.Array:
  """``transforms.RandomCropFlip`` on a batch: zero-pad, crop back at a random offset, flip half the images."""
  n, h, w, c = images.shape
  offsets_key, flip_key = jax.random.split(key)
  offsets = jax.random.randint(offsets_key, (n, 2), 0, 2 * padding + 1)
  flips = jax.random.bernoulli(flip_key, 0.5, (n,))
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  crop = jax.vmap(lambda image, at: jax.lax.dynamic_slice(image, (at[0], at[1], 0), (h, w, c)))
  cropped = crop(padded, offsets)
  return jnp.where(flips[:, None, None, None], cropped[:, :, ::-1], cropped)


def epoch_order(key: jax.Array, epoch: jax.Array, spec: Layout) -> jax.Array:
  """The record order of ``epoch``: a permutation of the records drawn from ``fold_in(key, epoch)``."""
  return jax.random.permutation(jax.random.fold_in(key, epoch), spec.num_records)


def train_batch(arrays: dict[str, jax.Array], order: jax.Array, key: jax.Array, step: jax.Array,
                spec: Layout) -> dict[str, jax.Array]:
  """Global batch ``step`` (``order``: its epoch's ``epoch_order``), augmented and normalised."""
  epoch, within = step // spec.steps_per_epoch, step % spec.steps_per_epoch
  keys = jax.lax.dynamic_slice(order, (within * spec.batch_size,), (spec.batch_size,))
  images = arrays['image'][keys]
  if spec.augmentation == 'crop_flip':
    images = crop_flip(images, jax.random.fold_in(jax.random.fold_in(key, epoch), within))
  return {'image': normalize(images, spec.mean, spec.std), 'label': arrays['label'][keys]}


def eval_batch(arrays: dict[str, jax.Array], index: jax.Array, spec: Layout) -> dict[str, jax.Array]:
  """Evaluation batch ``index`` in record order, padded past the end (``'weight'`` 0 on padding)."""
  positions = index * spec.batch_size + jnp.arange(spec.batch_size)
  weight = (positions < spec.num_records).astype(jnp.float32)
  keys = jnp.where(positions < spec.num_records, positions, 0)
  return {'image': normalize(arrays['image'][keys], spec.mean, spec.std), 'label': arrays['label'][keys],
          'weight': weight}
