"""ImageNet input pipeline throughput alone: JPEG decode + random resized crop + flip + normalise + batch.

A stand-in for ``tfds.data_source('imagenet2012')``: JPEGs of ImageNet's typical size (500x375), decoded on
read as TFDS does. Measures images/s for each ``worker_count``, after warm-up, on this host.

  python benchmarks/input_pipeline.py --workers=0,1,2 --seconds=20
"""

from __future__ import annotations

import io
import math
import os
import time

import numpy as np
from absl import app, flags

from prospr_jax import data

FLAGS = flags.FLAGS
flags.DEFINE_list('workers', ['0', '1', '2'], 'grain worker processes to try.')
flags.DEFINE_integer('batch_size', 256, 'Global batch size (one process).')
flags.DEFINE_float('seconds', 20.0, 'Measured seconds per setting.')
flags.DEFINE_float('target', 3700.0, 'Images/s one host must feed (default: ResNet-50 f32 train steps on one H200, '
                   'benchmarks/results/gpu_resnet50.json).')


class JpegSource:
  """``num_records`` records cycling over 32 distinct encoded JPEGs, decoded with PIL on every read."""

  def __init__(self, num_records: int = 1_281_167, height: int = 375, width: int = 500):
    from PIL import Image
    rng = np.random.default_rng(0)
    self._jpegs = []
    for _ in range(32):
      smooth = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8)
      buffer = io.BytesIO()
      Image.fromarray(smooth).resize((width, height)).save(buffer, format='JPEG', quality=90)
      self._jpegs.append(buffer.getvalue())
    self._num_records = num_records

  def __len__(self) -> int:
    return self._num_records

  def __repr__(self) -> str:
    return f'JpegSource({self._num_records})'

  def __getitem__(self, index: int):
    from PIL import Image
    with Image.open(io.BytesIO(self._jpegs[index % 32])) as image:
      return {'image': np.asarray(image.convert('RGB')), 'label': index % 1000}


def images_per_second(worker_count: int) -> float:
  loader = data.train_loader(data.get_dataset_info('imagenet2012'), JpegSource(), global_batch_size=FLAGS.batch_size,
                             seed=0, worker_count=worker_count)
  batches = iter(loader)
  next(batches)  # start-up and warm-up
  start, images = time.perf_counter(), 0
  while time.perf_counter() - start < FLAGS.seconds:
    images += next(batches)['image'].shape[0]
  return images / (time.perf_counter() - start)


def main(argv):
  del argv
  print(f'{"workers":>7} {"images/s":>9}')
  rates = {}
  for workers in map(int, FLAGS.workers):
    rates[workers] = images_per_second(workers)
    print(f'{workers:>7} {rates[workers]:>9.0f}', flush=True)
  per_core = max(rates.values()) / os.cpu_count()
  print(f'\n{per_core:.0f} images/s per CPU core here ({os.cpu_count()} cores); feeding '
        f'{FLAGS.target:.0f} images/s per host takes about {math.ceil(FLAGS.target / per_core)} cores '
        f'(worker_count about that many, on a host with that many free cores)')


if __name__ == '__main__':
  app.run(main)
