"""Datasets for the experiment harness: sources, augmentation, grain pipelines."""

from prospr_jax.data.idx import IdxFormatError, read_idx
from prospr_jax.data.info import DATASETS, DatasetInfo, get_dataset_info
from prospr_jax.data.pipeline import eval_batches, steps_per_epoch, train_loader
from prospr_jax.data.sampler import GlobalBatchSampler
from prospr_jax.data.sources import DatasetUnavailableError, load_source
