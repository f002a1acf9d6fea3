"""Prune at initialization with ProsPr, train the pruned network, and compare.

Until the experiment pipeline lands, this runs the core on a built-in offline
example: LeNet-300-100 on scikit-learn's 8x8 `digits` (1,797 real images, no
download). It scores every weight with each criterion, keeps the top-k, trains
each pruned network from the same initialisation with SGD (the forward pass
sees `params * mask`, and params are re-masked after each update), and prints
test accuracy next to the dense baseline.

  python prune.py --sparsity=0.98 --epochs=40
"""

from __future__ import annotations

import time

from absl import app, flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import prospr_jax

FLAGS = flags.FLAGS
flags.DEFINE_float('sparsity', 0.98, 'Fraction of prunable weights to remove, in [0, 1).')
flags.DEFINE_list('criteria', ['prospr', 'snip', 'magnitude', 'random'], 'Criteria to compare (registered names).')
flags.DEFINE_integer('epochs', 40, 'Training epochs for every network.')
flags.DEFINE_integer('batch_size', 64, 'Batch size for ProsPr steps and training.')
flags.DEFINE_integer('prospr_steps', 3, 'M: inner steps ProsPr differentiates through.')
flags.DEFINE_float('lr', 0.05, 'Learning rate of training (and of ProsPr inner steps).')
flags.DEFINE_integer('seed', 0, 'Seed of the initialisation, the data split and the batch order.')


class LeNet300100(nn.Module):
  """The fully connected LeNet-300-100 of the pruning literature."""

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(300)(x))
    x = nn.relu(nn.Dense(100)(x))
    return nn.Dense(10)(x)


def load_digits(seed: int):
  """scikit-learn's bundled 8x8 digits, standardised, split 80/20 by a seeded shuffle."""
  from sklearn.datasets import load_digits as sklearn_digits
  x, y = sklearn_digits(return_X_y=True)
  x = (x / 16.0 - 0.3) / 0.4
  order = np.random.default_rng(seed).permutation(len(x))
  split = int(0.8 * len(x))
  train, test = order[:split], order[split:]
  return (x[train].astype(np.float32), y[train]), (x[test].astype(np.float32), y[test])


def epoch_batches(data, batch_size, rng):
  x, y = data
  order = rng.permutation(len(x))
  for start in range(0, len(x) - batch_size + 1, batch_size):
    idx = order[start:start + batch_size]
    yield x[idx], y[idx]


def train(loss_fn, params, masks, data, *, epochs, batch_size, lr, seed):
  """SGD with momentum 0.9; pruned weights are exactly zero before and after every step."""
  optimizer = optax.sgd(lr, momentum=0.9)

  @jax.jit
  def step(params, opt_state, batch):
    grads = jax.grad(lambda p: loss_fn(prospr_jax.apply_mask(p, masks), batch))(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return prospr_jax.apply_mask(optax.apply_updates(params, updates), masks), opt_state

  params = prospr_jax.apply_mask(params, masks)
  opt_state = optimizer.init(params)
  rng = np.random.default_rng(seed)
  for _ in range(epochs):
    for batch in epoch_batches(data, batch_size, rng):
      params, opt_state = step(params, opt_state, batch)
  return params


def accuracy(model, params, data):
  x, y = data
  return float(np.mean(np.argmax(model.apply({'params': params}, x), -1) == y))


def main(argv):
  del argv
  model = LeNet300100()
  train_data, test_data = load_digits(FLAGS.seed)
  params = model.init(jax.random.key(FLAGS.seed), train_data[0][:1])['params']
  loss_fn = prospr_jax.flax_loss_fn(model, {'params': params})
  ones = prospr_jax.ones_mask(params)
  print(f'LeNet-300-100 on digits: {len(train_data[0])} train / {len(test_data[0])} test images, '
        f'{sum(m.size for m in jax.tree.leaves(ones)):,} prunable weights, sparsity {FLAGS.sparsity:.1%}')

  rng = np.random.default_rng(FLAGS.seed + 1)
  pruning_batches = list(epoch_batches(train_data, FLAGS.batch_size, rng))[:FLAGS.prospr_steps + 1]
  batches = jax.tree.map(lambda *xs: jnp.stack(xs), *pruning_batches)  # leading axis M + 1

  options = {'prospr': dict(inner_lr=FLAGS.lr, inner_momentum=0.9), 'random': dict(rng=FLAGS.seed)}
  dense_masks = jax.tree.map(lambda m: jnp.ones(m.shape, bool), ones)
  rows = [('dense', 0.0, accuracy(model, train(loss_fn, params, dense_masks, train_data, epochs=FLAGS.epochs,
                                               batch_size=FLAGS.batch_size, lr=FLAGS.lr, seed=FLAGS.seed),
                                  test_data))]
  for name in FLAGS.criteria:
    start = time.perf_counter()
    scores = prospr_jax.get_criterion(name)(params, batches, loss_fn=loss_fn, **options.get(name, {}))
    masks = prospr_jax.global_topk_mask(jax.block_until_ready(scores), FLAGS.sparsity, keep_one_per_layer=True)
    seconds = time.perf_counter() - start
    if name == FLAGS.criteria[0]:
      print(f'\n{name} mask:\n{prospr_jax.sparsity_report(masks, params)}')
    trained = train(loss_fn, params, masks, train_data, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size,
                    lr=FLAGS.lr, seed=FLAGS.seed)
    rows.append((name, seconds, accuracy(model, trained, test_data)))

  print(f'\n{"method":<10}  {"scoring time":>12}  {"test accuracy":>13}')
  for name, seconds, acc in rows:
    print(f'{name:<10}  {seconds:>11.2f}s  {acc:>13.2%}')


if __name__ == '__main__':
  app.run(main)
