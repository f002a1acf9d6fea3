"""Input pipelines: deterministic, resumable, padded evaluation, every dataset's source, clear failures."""

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
  with pytest.raises(ValueError, match='unknown dataset .mnist.*cifar10.*digits'):
    data.get_dataset_info('mnist')
