"""Prune your own flax.linen model with ProsPr, then train it in a plain optax loop.

  python examples/own_model.py                  # scikit-learn's bundled 8x8 digits: offline
  python examples/own_model.py --idx /usr/share/datasets/fashion-mnist --steps 1000   # an MNIST-style IDX folder
"""
import argparse
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import prospr_jax


def load(idx=None):
  """Images (N, H, W, 1) in [0, 1] and integer labels: the IDX files in ``idx``, else scikit-learn's digits."""
  if idx:
    from prospr_jax.data import read_idx
    images, labels = (read_idx(pathlib.Path(idx) / f'train-{n}-ubyte.gz') for n in ('images-idx3', 'labels-idx1'))
    return jnp.asarray(images[..., None] / 255, jnp.float32), jnp.asarray(labels, jnp.int32)
  from sklearn.datasets import load_digits
  digits = load_digits()
  return jnp.asarray(digits.images[..., None] / 16, jnp.float32), jnp.asarray(digits.target, jnp.int32)


class Net(nn.Module):
  @nn.compact
  def __call__(self, x, training: bool = False):   # a train flag under any name: say which (train_kwarg)
    x = nn.relu(nn.BatchNorm(use_running_average=not training)(nn.Conv(16, (3, 3))(x)))
    return nn.Dense(10)(x.reshape(len(x), -1))


def main(idx=None, steps=300, batch=128, sparsity=0.9):
  x, y = load(idx)
  test = len(x) // 6                                                    # the last sixth is held out
  model = Net()
  variables = model.init(jax.random.key(0), x[:1])
  loss_fn = prospr_jax.flax_loss_fn(model, variables, train_kwarg='training')    # BatchNorm in train mode
  batches = (x[:4 * batch].reshape(4, batch, *x.shape[1:]), y[:4 * batch].reshape(4, batch))  # M = 3 + meta
  masks = prospr_jax.global_topk_mask(prospr_jax.prospr_saliency(variables['params'], batches, loss_fn=loss_fn),
                                      sparsity)
  params, stats = prospr_jax.apply_mask(variables['params'], masks), variables['batch_stats']
  tx = prospr_jax.masked_optimizer(optax.adamw(1e-2, weight_decay=1e-4), masks)  # pruned weights stay 0
  opt_state = tx.init(params)

  @jax.jit
  def step(params, stats, opt_state, x, y):
    def loss(params):
      logits, new = model.apply({'params': params, 'batch_stats': stats}, x, training=True, mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new['batch_stats']
    grads, stats = jax.grad(loss, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state

  for k in range(steps):
    i = k * batch % (len(x) - test - batch)
    params, stats, opt_state = step(params, stats, opt_state, x[i:i + batch], y[i:i + batch])
  logits = model.apply({'params': params, 'batch_stats': stats}, x[-test:])
  accuracy = float((logits.argmax(-1) == y[-test:]).mean())
  print(prospr_jax.sparsity_report(masks, params), f'\nheld-out accuracy at {sparsity:.0%} sparsity: {accuracy:.3f}')
  return accuracy


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--idx', help='a folder with train-images-idx3-ubyte.gz and train-labels-idx1-ubyte.gz')
  parser.add_argument('--steps', type=int, default=300)
  main(**vars(parser.parse_args()))
