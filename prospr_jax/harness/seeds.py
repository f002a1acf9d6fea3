"""Every random stream of an experiment, named, all derived from ``config.seed`` in this one place.

| stream               | used for                                         | derived as             |
|----------------------|--------------------------------------------------|------------------------|
| ``model_init``       | the initial weights every network starts from    | ``key(seed)``          |
| ``train_data``       | training data order and augmentation             | ``seed``               |
| ``prune_data``       | the pruning batches (a different draw)           | ``seed + 1``           |
| ``prune_dropout``    | dropout inside the criterion's loss              | ``key(seed)``          |
| ``random_criterion`` | the scores of ``criterion='random'``             | ``seed``               |
| ``shuffle_ablation`` | the per-layer permutation of ``ablation='shuffle'`` | ``seed + 3``        |
| ``train_dropout``    | dropout while training, folded with the step     | ``fold_in(key(seed), 2)`` |
| ``device_data``      | order and augmentation of a device-resident set  | ``fold_in(key(seed), 4)`` |
| ``reinit_ablation``  | the fresh weights of ``ablation='reinit'``       | ``key(seed + 10_000)`` |
| ``criterion_reinit`` | a criterion's ``initialization='reinit'`` (3SP)  | ``key(seed + 20_000)`` |

The offsets are historical (changing them changes every published mask and
result); what matters is that no two streams coincide where they must differ.
"""

from __future__ import annotations

import jax


def model_init(seed: int) -> jax.Array:
  return jax.random.key(seed)


def train_data(seed: int) -> int:
  return seed


def prune_data(seed: int) -> int:
  return seed + 1


def prune_dropout(seed: int) -> jax.Array:
  return jax.random.key(seed)


def random_criterion(seed: int) -> int:
  return seed


def shuffle_ablation(seed: int) -> int:
  return seed + 3


def train_dropout(seed: int) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), 2)


def device_data(seed: int) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), 4)


def reinit_ablation(seed: int) -> jax.Array:
  return jax.random.key(seed + 10_000)


def criterion_reinit(seed: int) -> jax.Array:
  return jax.random.key(seed + 20_000)
