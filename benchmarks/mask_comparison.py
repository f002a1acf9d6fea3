"""What the precision and stability benchmarks share: the same Fashion-MNIST pruning batches, and mask overlap."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from prospr_jax import topk
from prospr_jax.data import info as info_lib, sources


def pruning_batches(data_dir: str | None, batch_size: int, steps: int) -> tuple[jax.Array, jax.Array]:
  """M + 1 standardized Fashion-MNIST training batches, the first ``(M + 1) * batch_size`` images of a fixed shuffle."""
  source = sources.idx_source('fashion_mnist', 'train', data_dir)
  info = info_lib.get_dataset_info('fashion_mnist')
  index = np.random.default_rng(0).permutation(len(source))[:(steps + 1) * batch_size]
  images = (source.images[index].astype(np.float32) / 255 - np.float32(info.mean[0])) / np.float32(info.std[0])
  shape = (steps + 1, batch_size)
  return jnp.asarray(images.reshape(*shape, 28, 28, 1)), jnp.asarray(source.labels[index].astype(np.int32).reshape(shape))


def flat(scores) -> np.ndarray:
  return np.concatenate([np.ravel(np.asarray(leaf, np.float64)) for leaf in jax.tree.leaves(scores)])


def kept_overlap(a, b, sparsity: float) -> float:
  """The fraction of ``b``'s kept weights that ``a`` keeps too, at ``sparsity`` (global top-k of each)."""
  mask_a = flat(topk.global_topk_mask(a, sparsity)) > 0
  mask_b = flat(topk.global_topk_mask(b, sparsity)) > 0
  return float(np.sum(mask_a & mask_b) / np.sum(mask_b))
