"""Prune your own Flax NNX model with ProsPr, then train it with nnx.Optimizer.

  python examples/own_model_nnx.py              # scikit-learn's bundled 8x8 digits: offline
  python examples/own_model_nnx.py --idx /usr/share/datasets/fashion-mnist --steps 1000   # an MNIST-style IDX folder
"""
import argparse
import pathlib

import jax.numpy as jnp
import optax
from flax import nnx

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


class Net(nnx.Module):
  def __init__(self, side, rngs):
    self.conv = nnx.Conv(1, 16, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(16, rngs=rngs)
    self.head = nnx.Linear(side * side * 16, 10, rngs=rngs)

  def __call__(self, x):
    return self.head(nnx.relu(self.bn(self.conv(x))).reshape(len(x), -1))


def main(idx=None, steps=300, batch=128, sparsity=0.9):
  x, y = load(idx)
  test = len(x) // 6                                                    # the last sixth is held out
  model = Net(x.shape[1], nnx.Rngs(0))
  batches = (x[:4 * batch].reshape(4, batch, *x.shape[1:]), y[:4 * batch].reshape(4, batch))  # M = 3 + meta
  masks = prospr_jax.global_topk_mask(prospr_jax.prospr_saliency(model, batches), sparsity)  # BatchNorm: train mode
  nnx.update(model, prospr_jax.apply_mask(nnx.state(model, nnx.Param), masks))
  tx = prospr_jax.masked_optimizer(optax.adamw(1e-2, weight_decay=1e-4), masks)  # pruned weights stay 0
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, x, y):
    loss = lambda model: optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
    optimizer.update(model, nnx.grad(loss)(model))

  for k in range(steps):
    i = k * batch % (len(x) - test - batch)
    step(model, optimizer, x[i:i + batch], y[i:i + batch])
  model.eval()                                                          # BatchNorm on its running statistics
  accuracy = float((model(x[-test:]).argmax(-1) == y[-test:]).mean())
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  print(prospr_jax.sparsity_report(masks, params), f'\nheld-out accuracy at {sparsity:.0%} sparsity: {accuracy:.3f}')
  return accuracy


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--idx', help='a folder with train-images-idx3-ubyte.gz and train-labels-idx1-ubyte.gz')
  parser.add_argument('--steps', type=int, default=300)
  main(**vars(parser.parse_args()))
