"""Input pipelines: deterministic, resumable, padded evaluation, every dataset's source, clear failures."""

import gzip
import pathlib
import struct

import numpy as np
import pytest
import tensorflow_datasets as tfds

from prospr_jax import data
from prospr_jax.data import transforms

DIGITS = data.get_dataset_info('digits')


def digits_loader(seed=0, batch_size=32, start_step=0):
  return data.train_loader(DIGITS, data.load_source('digits', 'train'), global_batch_size=batch_size, seed=seed,
                           start_step=start_step)


def take(iterator, n):
  return [next(iterator)['label'] for _ in range(n)]


def test_training_order_is_fixed_by_the_seed():
  assert np.array_equal(take(iter(digits_loader(0)), 3), take(iter(digits_loader(0)), 3))
  assert not np.array_equal(take(iter(digits_loader(0)), 3), take(iter(digits_loader(1)), 3))


def test_a_loader_started_at_step_s_continues_where_the_original_was_after_s_steps():
  iterator = iter(digits_loader())
  take(iterator, 5)
  expected = take(iterator, 50)  # runs past the end of an epoch (44 batches of 32)
  np.testing.assert_array_equal(take(iter(digits_loader(start_step=5)), 50), expected)


def test_every_epoch_visits_each_record_once_in_a_new_order():
  source = data.load_source('digits', 'train')
  sampler = data.GlobalBatchSampler(len(source), 32, 1, seed=0)
  epochs = np.array([[sampler[i].record_key for i in range(e * len(source), (e + 1) * len(source))]
                     for e in range(2)])
  assert all(sorted(e) == list(range(len(source))) for e in epochs)
  assert not np.array_equal(epochs[0], epochs[1])


def test_processes_read_disjoint_slices_of_the_same_global_batches():
  """grain asks process p of P for sampler index i * P + p; together they cover global batch b exactly."""
  single = data.GlobalBatchSampler(100, 8, 1, seed=3)
  pair = data.GlobalBatchSampler(100, 8, 2, seed=3)
  for step in range(3):
    global_keys = [single[step * 8 + w].record_key for w in range(8)]
    per_process = [[pair[(step * 4 + w) * 2 + p].record_key for w in range(4)] for p in range(2)]
    assert per_process[0] + per_process[1] == global_keys
  with pytest.raises(ValueError, match='not divisible by 3 processes'):
    data.GlobalBatchSampler(100, 8, 3, seed=0)


def test_training_batches_are_normalised_float_images_with_int_labels():
  batch = next(iter(digits_loader(batch_size=16)))
  assert batch['image'].shape == (16, 8, 8, 1) and batch['image'].dtype == np.float32
  assert batch['label'].dtype == np.int32 and abs(float(batch['image'].mean())) < 1.0


def test_evaluation_covers_every_record_once_and_pads_the_last_batch():
  source = data.load_source('digits', 'test')
  batches = list(data.eval_batches(DIGITS, source, global_batch_size=100))
  assert all(b['image'].shape[0] == 100 for b in batches)
  assert sum(float(b['weight'].sum()) for b in batches) == len(source)
  labels = np.concatenate([b['label'][b['weight'] > 0] for b in batches])
  np.testing.assert_array_equal(labels, [source[i]['label'] for i in range(len(source))])


def test_random_crop_with_padding_keeps_the_shape_and_moves_content():
  image = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)
  rng = np.random.default_rng(0)
  crops = [transforms.RandomCropFlip(4).random_map({'image': image, 'label': 0}, rng)['image'] for _ in range(20)]
  assert all(c.shape == (32, 32, 3) for c in crops)
  assert any(not np.array_equal(c, image) for c in crops) and any((c == 0).any() for c in crops)  # zero padding


def test_imagenet_crops_are_224_squares():
  image = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
  train = transforms.RandomResizedCrop(224).random_map({'image': image, 'label': 1}, np.random.default_rng(0))
  evaluation = transforms.ResizeCenterCrop(224).map({'image': image, 'label': 1})
  assert train['image'].shape == (224, 224, 3) and evaluation['image'].shape == (224, 224, 3)


def test_cifar10_reads_through_tfds_data_source():
  with tfds.testing.mock_data(num_examples=20):
    source = data.load_source('cifar10', 'train')
    loader = data.train_loader(data.get_dataset_info('cifar10'), source, global_batch_size=8, seed=0)
    batch = next(iter(loader))
  assert batch['image'].shape == (8, 32, 32, 3) and batch['label'].shape == (8,)


def test_a_missing_tfds_dataset_says_how_to_prepare_it(tmp_path):
  with pytest.raises(data.DatasetUnavailableError, match=r'tfds build cifar100 --file_format=array_record'):
    data.load_source('cifar100', 'train', str(tmp_path))


def test_imagenet_missing_explains_the_manual_download(tmp_path):
  with pytest.raises(data.DatasetUnavailableError, match=r'manual download.*ILSVRC2012_img_train.tar'):
    data.load_source('imagenet2012', 'train', str(tmp_path))


def write_tiny_imagenet(root, wnids=('n01', 'n02'), per_class=3):
  from PIL import Image
  base = root / 'tiny-imagenet-200'
  (base / 'val' / 'images').mkdir(parents=True)
  (base / 'wnids.txt').write_text('\n'.join(wnids) + '\n')
  rows = []
  for c, wnid in enumerate(wnids):
    (base / 'train' / wnid / 'images').mkdir(parents=True)
    for i in range(per_class):
      pixels = np.full((64, 64, 3), 40 * c + i, np.uint8)
      Image.fromarray(pixels).save(base / 'train' / wnid / 'images' / f'{wnid}_{i}.JPEG')
      Image.fromarray(pixels).save(base / 'val' / 'images' / f'val_{c}_{i}.JPEG')
      rows.append(f'val_{c}_{i}.JPEG\t{wnid}\t0\t0\t63\t63')
  (base / 'val' / 'val_annotations.txt').write_text('\n'.join(rows) + '\n')


def test_tiny_imagenet_reads_its_standard_folder_layout(tmp_path):
  write_tiny_imagenet(tmp_path)
  train = data.load_source('tiny_imagenet', 'train', str(tmp_path))
  val = data.load_source('tiny_imagenet', 'val', str(tmp_path))
  assert len(train) == 6 and len(val) == 6
  assert train[4]['image'].shape == (64, 64, 3) and train[4]['label'] == 1 and val[0]['label'] == 0


def test_tiny_imagenet_missing_says_where_to_get_it(tmp_path):
  with pytest.raises(data.DatasetUnavailableError, match='tiny-imagenet-200.zip'):
    data.load_source('tiny_imagenet', 'train', str(tmp_path))


def test_unknown_dataset_lists_the_valid_names():
  with pytest.raises(ValueError, match='unknown dataset .svhn.*cifar10.*digits.*fashion_mnist.*mnist'):
    data.get_dataset_info('svhn')


def idx_bytes(array, type_code=0x08):
  array = np.asarray(array, np.uint8)
  return struct.pack('>BBBB', 0, 0, type_code, array.ndim) + struct.pack(f'>{array.ndim}I', *array.shape) + \
      array.tobytes()


def write_idx(path, array, compress=True, **kwargs):
  raw = idx_bytes(array, **kwargs)
  path.write_bytes(gzip.compress(raw) if compress else raw)


def write_mnist_like(folder, sizes=(('train', 5), ('t10k', 3)), compress=True, seed=0):
  """The four IDX files with tiny splits; returns {split prefix: (images, labels)}."""
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  written = {}
  for prefix, n in sizes:
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    suffix = '.gz' if compress else ''
    write_idx(folder / f'{prefix}-images-idx3-ubyte{suffix}', images, compress)
    write_idx(folder / f'{prefix}-labels-idx1-ubyte{suffix}', labels, compress)
    written[prefix] = images, labels
  return written


@pytest.mark.parametrize('compress', [True, False])
def test_fashion_mnist_reads_gzip_or_plain_idx_files_as_28x28x1_uint8_records(tmp_path, compress):
  written = write_mnist_like(tmp_path, compress=compress)
  train = data.load_source('fashion_mnist', 'train', str(tmp_path))
  test = data.load_source('fashion_mnist', 'test', str(tmp_path))
  assert len(train) == 5 and len(test) == 3
  record = train[4]
  assert record['image'].shape == (28, 28, 1) and record['image'].dtype == np.uint8
  np.testing.assert_array_equal(record['image'][..., 0], written['train'][0][4])
  assert record['label'] == int(written['train'][1][4]) and isinstance(record['label'], int)
  np.testing.assert_array_equal(test[2]['image'][..., 0], written['t10k'][0][2])


def test_mnist_uses_the_same_reader_and_a_data_dir_may_hold_the_dataset_folder(tmp_path):
  written = write_mnist_like(tmp_path / 'mnist')
  source = data.load_source('mnist', 'train', str(tmp_path))
  np.testing.assert_array_equal(source[0]['image'][..., 0], written['train'][0][0])


def test_idx_arrays_are_read_once_per_file(tmp_path, monkeypatch):
  write_mnist_like(tmp_path)
  data.load_source('fashion_mnist', 'train', str(tmp_path))
  monkeypatch.setattr(data.idx, 'read_idx', lambda *a, **k: pytest.fail('read the file again'))
  assert len(data.load_source('fashion_mnist', 'train', str(tmp_path))) == 5


def test_fashion_mnist_batches_through_the_grain_pipeline(tmp_path):
  write_mnist_like(tmp_path, sizes=(('train', 16), ('t10k', 4)))
  info = data.get_dataset_info('fashion_mnist')
  batch = next(iter(data.train_loader(info, data.load_source('fashion_mnist', 'train', str(tmp_path)),
                                      global_batch_size=8, seed=0)))
  assert batch['image'].shape == (8, 28, 28, 1) and batch['image'].dtype == np.float32
  assert info.augmentation == 'none' and info.input_shape == (28, 28, 1) and info.num_classes == 10


def test_missing_fashion_mnist_gives_the_apt_command_and_the_upstream_file_names(tmp_path):
  with pytest.raises(data.DatasetUnavailableError,
                     match=r'(?s)no train-images-idx3-ubyte.gz.*apt-get install dataset-fashion-mnist.*'
                           r'train-labels-idx1-ubyte.gz.*t10k-images-idx3-ubyte.gz.*zalandoresearch/fashion-mnist'):
    data.load_source('fashion_mnist', 'train', str(tmp_path))


def test_a_corrupt_idx_file_is_named_in_the_error(tmp_path):
  write_mnist_like(tmp_path)
  images = tmp_path / 'train-images-idx3-ubyte.gz'
  images.write_bytes(gzip.compress(idx_bytes(np.zeros((5, 28, 28)))[:-10]))  # truncated body
  with pytest.raises(data.IdxFormatError, match=r'train-images-idx3-ubyte.gz: header declares shape \(5, 28, 28\)'):
    data.load_source('fashion_mnist', 'train', str(tmp_path))
  images.write_bytes(b'\x1f\x8b not really gzip')
  with pytest.raises(data.IdxFormatError, match='train-images-idx3-ubyte.gz: corrupt gzip'):
    data.load_source('fashion_mnist', 'train', str(tmp_path))


@pytest.mark.parametrize('raw, message', [
    (b'\x08\x03\x00\x00', 'not an IDX file'),
    (idx_bytes(np.zeros((2, 28, 28)), type_code=0x0D), r'IDX type 0x0d, expected 0x08'),
    (idx_bytes(np.zeros((2, 784))), 'rank 2 .*expected rank 3'),
])
def test_idx_magic_number_type_and_rank_are_checked(tmp_path, raw, message):
  write_mnist_like(tmp_path)
  (tmp_path / 'train-images-idx3-ubyte.gz').write_bytes(gzip.compress(raw))
  with pytest.raises(data.IdxFormatError, match=message):
    data.load_source('fashion_mnist', 'train', str(tmp_path))


def test_image_and_label_counts_must_agree(tmp_path):
  write_mnist_like(tmp_path)
  write_idx(tmp_path / 'train-labels-idx1-ubyte.gz', np.zeros(4))
  with pytest.raises(data.IdxFormatError, match=r'holds 5 images but .*train-labels-idx1-ubyte.gz holds 4 labels'):
    data.load_source('fashion_mnist', 'train', str(tmp_path))


def test_images_of_the_wrong_size_or_labels_out_of_range_are_refused(tmp_path):
  write_mnist_like(tmp_path)
  write_idx(tmp_path / 'train-images-idx3-ubyte.gz', np.zeros((5, 32, 32)))
  with pytest.raises(data.IdxFormatError, match='images of 32x32 pixels, expected 28x28'):
    data.load_source('fashion_mnist', 'train', str(tmp_path))
  write_idx(tmp_path / 't10k-labels-idx1-ubyte.gz', [1, 2, 10])
  with pytest.raises(data.IdxFormatError, match='label 10 out of range for 10 classes'):
    data.load_source('fashion_mnist', 'test', str(tmp_path))


FASHION_MNIST_DIR = pathlib.Path('/usr/share/datasets/fashion-mnist')


@pytest.mark.skipif(not (FASHION_MNIST_DIR / 'train-images-idx3-ubyte.gz').exists(),
                    reason='Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)')
@pytest.mark.slow
def test_fashion_mnist_normalisation_is_the_training_set_mean_and_std():
  source = data.load_source('fashion_mnist', 'train')
  pixels = source.images.astype(np.float64) / 255
  info = data.get_dataset_info('fashion_mnist')
  assert len(source) == 60_000 and info.mean[0] == pytest.approx(pixels.mean(), abs=1e-4)
  assert info.std[0] == pytest.approx(pixels.std(), abs=1e-4)


class RecordsOnly:
  """The same records without the arrays: the pipeline must take its per-record (grain) path."""

  def __init__(self, source):
    self.source = source

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    return self.source[index]


@pytest.mark.parametrize('start_step', [0, 40])
def test_in_memory_batches_gathered_whole_equal_the_per_record_pipeline(start_step):
  source = data.load_source('digits', 'train')
  loaders = [data.train_loader(DIGITS, s, global_batch_size=32, seed=3, start_step=start_step)
             for s in (source, RecordsOnly(source))]
  for fast, slow in zip(*(iter(loader) for loader in loaders)):
    assert fast['image'].dtype == slow['image'].dtype == np.float32
    np.testing.assert_array_equal(fast['image'], slow['image'])
    np.testing.assert_array_equal(fast['label'], slow['label'])
    start_step += 1
    if start_step > 50:  # past an epoch boundary (44 batches)
      break
  evals = [list(data.eval_batches(DIGITS, s, global_batch_size=100)) for s in
           (data.load_source('digits', 'test'), RecordsOnly(data.load_source('digits', 'test')))]
  assert len(evals[0]) == len(evals[1])
  for fast, slow in zip(*evals):
    for key in ('image', 'label', 'weight'):
      np.testing.assert_array_equal(fast[key], slow[key])
