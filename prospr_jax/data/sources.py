"""Random-access sources of ``{'image': uint8 HWC, 'label': int}`` records, one per dataset.

TFDS datasets are read with ``tfds.data_source`` (array_record files, no
TensorFlow at read time); Tiny-ImageNet from its standard folder; MNIST and
Fashion-MNIST from their four IDX files (read once, held in memory);
scikit-learn's bundled ``digits`` from memory. A dataset that is not there
raises ``DatasetUnavailableError`` with the steps to get it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from prospr_jax.data import idx
from prospr_jax.data.info import get_dataset_info

DIGITS_TEST_FRACTION = 0.2


class DatasetUnavailableError(RuntimeError):
  """The dataset is not on this machine; the message says how to get it."""


class ArraySource:
  """Records held in memory as two arrays."""

  def __init__(self, name: str, images: np.ndarray, labels: np.ndarray):
    self.name, self.images, self.labels = name, images, labels

  def __repr__(self) -> str:  # grain checks it when restoring an iterator: stable across runs
    return f'ArraySource({self.name!r}, {len(self)} records)'

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {'image': self.images[index], 'label': int(self.labels[index])}


def digits_source(split: str) -> ArraySource:
  """scikit-learn's 1,797 8x8 digits as uint8 images, split 80/20 by a fixed shuffle."""
  from sklearn.datasets import load_digits
  x, y = load_digits(return_X_y=True)
  images = np.round(x * (255 / 16)).astype(np.uint8).reshape(-1, 8, 8, 1)
  order = np.random.default_rng(0).permutation(len(y))
  cut = int(round(len(y) * (1 - DIGITS_TEST_FRACTION)))
  index = {'train': order[:cut], 'test': order[cut:]}.get(split)
  if index is None:
    raise ValueError(f"digits has splits 'train' and 'test', not {split!r}")
  return ArraySource(f'digits/{split}', images[index], y[index])


class TinyImageNetSource:
  """Tiny-ImageNet-200 from its standard layout: ``train/<wnid>/images/*.JPEG``, ``val/val_annotations.txt``."""

  def __init__(self, root: str | os.PathLike[str], split: str):
    root = pathlib.Path(root)
    self.root, self.split = root, split
    if not (root / 'wnids.txt').exists():
      raise DatasetUnavailableError(
          f'Tiny-ImageNet not found at {root} (no wnids.txt). Download and unzip it once:\n'
          '  wget http://cs231n.stanford.edu/tiny-imagenet-200.zip && unzip tiny-imagenet-200.zip\n'
          'then set config.data_dir to the parent folder of tiny-imagenet-200/.')
    wnids = (root / 'wnids.txt').read_text().split()
    label_of = {wnid: i for i, wnid in enumerate(wnids)}
    if split == 'train':
      self.items = [(path, label_of[wnid]) for wnid in wnids
                    for path in sorted((root / 'train' / wnid / 'images').glob('*.JPEG'))]
    elif split == 'val':
      rows = [line.split('\t') for line in (root / 'val' / 'val_annotations.txt').read_text().splitlines() if line]
      self.items = [(root / 'val' / 'images' / row[0], label_of[row[1]]) for row in rows]
    else:
      raise ValueError(f"tiny_imagenet has splits 'train' and 'val', not {split!r}")

  def __len__(self) -> int:
    return len(self.items)

  def __repr__(self) -> str:
    return f'TinyImageNetSource({str(self.root)!r}, {self.split!r}, {len(self)} records)'

  def __getitem__(self, index: int) -> dict[str, Any]:
    from PIL import Image
    path, label = self.items[index]
    with Image.open(path) as image:
      return {'image': np.asarray(image.convert('RGB')), 'label': label}


IDX_FILES = {'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
             'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')}
IDX_FILE_LIST = ', '.join(f'{stem}.gz' for stems in IDX_FILES.values() for stem in stems)


@dataclasses.dataclass(frozen=True)
class IdxDataset:
  """Where an IDX dataset lives by default and how to get it."""
  title: str
  folder: str    # default folder; config.data_dir overrides it
  get_it: str    # the install or download instructions


IDX_DATASETS = {
    'fashion_mnist': IdxDataset(
        'Fashion-MNIST', '/usr/share/datasets/fashion-mnist',
        'Install it with\n  sudo apt-get install dataset-fashion-mnist   # into /usr/share/datasets/fashion-mnist/\n'
        f'or download {IDX_FILE_LIST} from https://github.com/zalandoresearch/fashion-mnist (folder data/fashion) '
        'into one folder and set config.data_dir to it.'),
    'mnist': IdxDataset(
        'MNIST', '/usr/share/datasets/mnist',
        f'Download {IDX_FILE_LIST} from http://yann.lecun.com/exdb/mnist/ (or the mirror '
        'https://ossci-datasets.s3.amazonaws.com/mnist/) into /usr/share/datasets/mnist/, or into any folder and '
        'set config.data_dir to it.'),
}


def _find_idx_file(folders: Sequence[pathlib.Path], stem: str, dataset: IdxDataset) -> pathlib.Path:
  """``stem.gz`` or the uncompressed ``stem`` in the first folder that has one."""
  for folder in folders:
    for path in (folder / f'{stem}.gz', folder / stem):
      if path.is_file():
        return path
  raise DatasetUnavailableError(
      f'{dataset.title} not found: no {stem}.gz or {stem} in {" or ".join(map(str, folders))}. {dataset.get_it}')


@functools.lru_cache(maxsize=8)
def _read_idx_pair(images_path: str, labels_path: str, _stamp: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
  """Images (N, H, W) and labels (N,), checked against each other; cached per file (and its mtime and size)."""
  images, labels = idx.read_idx(images_path, ndim=3), idx.read_idx(labels_path, ndim=1)
  if len(images) != len(labels):
    raise idx.IdxFormatError(f'{images_path} holds {len(images):,} images but {labels_path} holds {len(labels):,} '
                             'labels: the files do not belong together')
  return images, labels


def _stamp(*paths: pathlib.Path) -> tuple[int, ...]:
  return tuple(v for p in paths for v in (p.stat().st_mtime_ns, p.stat().st_size))


def idx_source(name: str, split: str, data_dir: str | os.PathLike[str] | None = None) -> ArraySource:
  """MNIST or Fashion-MNIST ``split`` from its IDX files (.gz or plain) in ``data_dir`` or ``data_dir/fashion-mnist``.

  Without ``data_dir``: the Debian package's folder (``/usr/share/datasets/fashion-mnist``, ``.../mnist``).
  """
  dataset, info = IDX_DATASETS[name], get_dataset_info(name)
  if split not in IDX_FILES:
    raise ValueError(f"{name} has splits 'train' and 'test', not {split!r}")
  root = pathlib.Path(data_dir or dataset.folder)
  folders = [root, root / pathlib.Path(dataset.folder).name] if data_dir else [root]
  paths = [_find_idx_file(folders, stem, dataset) for stem in IDX_FILES[split]]
  images, labels = _read_idx_pair(*map(str, paths), _stamp(*paths))
  if images.shape[1:] != (info.image_size, info.image_size):
    raise idx.IdxFormatError(f'{paths[0]}: images of {images.shape[1]}x{images.shape[2]} pixels, expected '
                             f'{info.image_size}x{info.image_size} for {dataset.title}')
  if labels.size and labels.max() >= info.num_classes:
    raise idx.IdxFormatError(f'{paths[1]}: label {labels.max()} out of range for {info.num_classes} classes')
  return ArraySource(f'{name}/{split}', images[..., None], labels)


def _tfds_instructions(name: str, data_dir: str | None) -> str:
  where = f' --data_dir={data_dir}' if data_dir else ''
  if name == 'imagenet2012':
    return ('ImageNet needs a manual download (https://image-net.org): put ILSVRC2012_img_train.tar and '
            'ILSVRC2012_img_val.tar in ~/tensorflow_datasets/downloads/manual/, then prepare it once with\n'
            f"  pip install 'prospr_jax[prepare]' && tfds build imagenet2012 --file_format=array_record{where}")
  return (f'Prepare it once (needs network and TensorFlow) with\n'
          f"  pip install 'prospr_jax[prepare]' && tfds build {name} --file_format=array_record{where}")


def tfds_source(name: str, split: str, data_dir: str | None = None) -> Sequence[Any]:
  """``tfds.data_source`` over array_record files, with the steps to prepare them if missing."""
  import tensorflow_datasets as tfds
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as error:  # tfds raises several types for "not prepared"
    raise DatasetUnavailableError(
        f'TFDS dataset {name!r} (split {split!r}) is not available as array_record files in '
        f'{data_dir or "~/tensorflow_datasets"}. {_tfds_instructions(name, data_dir)}') from error


def load_source(name: str, split: str, data_dir: str | None = None) -> Sequence[Any]:
  """The records of ``name``/``split``."""
  if name == 'digits':
    return digits_source(split)
  if name == 'tiny_imagenet':
    return TinyImageNetSource(pathlib.Path(data_dir or '.') / 'tiny-imagenet-200', split)
  if name in IDX_DATASETS:
    return idx_source(name, split, data_dir)
  return tfds_source(name, split, data_dir)
