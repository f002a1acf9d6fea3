"""What the harness needs to know about each dataset: classes, shapes, splits, normalisation."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  num_classes: int
  image_size: int        # square side the model sees
  channels: int
  mean: tuple[float, ...]  # per-channel, on [0, 1] pixels
  std: tuple[float, ...]
  train_split: str = 'train'
  eval_split: str = 'test'
  augmentation: str = 'crop_flip'  # 'crop_flip' (pad 4), 'imagenet' (random resized crop) or 'none'

  @property
  def input_shape(self) -> tuple[int, int, int]:
    return (self.image_size, self.image_size, self.channels)


DATASETS: dict[str, DatasetInfo] = {
    'digits': DatasetInfo('digits', 10, 8, 1, (0.3,), (0.4,), augmentation='none'),
    # Training-set pixel mean / std, measured on the IDX files (fashion_mnist: 0.28604 / 0.35302).
    'mnist': DatasetInfo('mnist', 10, 28, 1, (0.1307,), (0.3081,), augmentation='none'),
    'fashion_mnist': DatasetInfo('fashion_mnist', 10, 28, 1, (0.2860,), (0.3530,), augmentation='none'),
    'cifar10': DatasetInfo('cifar10', 10, 32, 3, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'cifar100': DatasetInfo('cifar100', 100, 32, 3, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    'tiny_imagenet': DatasetInfo('tiny_imagenet', 200, 64, 3, (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821),
                                 eval_split='val'),
    'imagenet2012': DatasetInfo('imagenet2012', 1000, 224, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                                eval_split='validation', augmentation='imagenet'),
}


def get_dataset_info(name: str) -> DatasetInfo:
  if name not in DATASETS:
    raise ValueError(f'unknown dataset {name!r}; valid names: {", ".join(sorted(DATASETS))}')
  return DATASETS[name]
