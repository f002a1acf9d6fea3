"""Per-record augmentation and normalisation as grain transforms (numpy, deterministic per record)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import grain
import numpy as np


def _to_float(image: np.ndarray) -> np.ndarray:
  return np.asarray(image, np.float32) / 255.0


@dataclasses.dataclass(frozen=True)
class Normalize(grain.transforms.Map):
  """uint8 HWC -> float32 ``(x / 255 - mean) / std`` per channel."""
  mean: tuple[float, ...]
  std: tuple[float, ...]

  def map(self, record: dict[str, Any]) -> dict[str, Any]:
    image = (_to_float(record['image']) - np.float32(self.mean)) / np.float32(self.std)
    return {'image': image.astype(np.float32), 'label': np.int32(record['label'])}


@dataclasses.dataclass(frozen=True)
class RandomCropFlip(grain.transforms.RandomMap):
  """Zero-pad by ``padding``, crop back to the original size at a random offset, flip half the images."""
  padding: int = 4

  def random_map(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    image = np.asarray(record['image'])
    h, w = image.shape[:2]
    p = self.padding
    padded = np.pad(image, ((p, p), (p, p), (0, 0)))
    top, left = rng.integers(0, 2 * p + 1, size=2)
    image = padded[top:top + h, left:left + w]
    if rng.random() < 0.5:
      image = image[:, ::-1]
    return dict(record, image=np.ascontiguousarray(image))


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  from PIL import Image
  return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


@dataclasses.dataclass(frozen=True)
class RandomResizedCrop(grain.transforms.RandomMap):
  """torchvision's RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) to ``size``, then a random flip."""
  size: int = 224

  def random_map(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    image = np.asarray(record['image'])
    h, w = image.shape[:2]
    for _ in range(10):
      area = h * w * rng.uniform(0.08, 1.0)
      ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
      cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
      if 0 < cw <= w and 0 < ch <= h:
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        break
    else:  # fall back to a center crop
      ch, cw = min(h, w), min(h, w)
      top, left = (h - ch) // 2, (w - cw) // 2
    image = _resize(image[top:top + ch, left:left + cw], (self.size, self.size))
    if rng.random() < 0.5:
      image = image[:, ::-1]
    return dict(record, image=np.ascontiguousarray(image))


@dataclasses.dataclass(frozen=True)
class ResizeCenterCrop(grain.transforms.Map):
  """Evaluation: resize the short side to ``size / 0.875``, crop the central ``size`` square."""
  size: int = 224

  def map(self, record: dict[str, Any]) -> dict[str, Any]:
    image = np.asarray(record['image'])
    h, w = image.shape[:2]
    short = round(self.size / 0.875)
    scale = short / min(h, w)
    image = _resize(image, (max(short, round(h * scale)), max(short, round(w * scale))))
    h, w = image.shape[:2]
    top, left = (h - self.size) // 2, (w - self.size) // 2
    return dict(record, image=image[top:top + self.size, left:left + self.size])
