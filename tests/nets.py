"""Small networks and data the tests share; the reference net of tests/data/ORACLE.md."""

from __future__ import annotations

import functools
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import prospr_jax

DATA = pathlib.Path(__file__).parent / 'data'
ORACLE_LAYERS = ('conv1', 'conv2', 'dense')


def load_oracle(name: str) -> dict[str, np.ndarray]:
  with np.load(DATA / f'{name}.npz') as f:
    return dict(f)


def oracle_params(ref: dict[str, np.ndarray]) -> dict:
  return {layer: {'kernel': jnp.asarray(ref[f'{layer}_kernel']), 'bias': jnp.asarray(ref[f'{layer}_bias'])}
          for layer in ORACLE_LAYERS}


def oracle_batches(ref: dict[str, np.ndarray]) -> tuple[jax.Array, jax.Array]:
  return jnp.asarray(ref['x']), jnp.asarray(ref['y'])


def _conv(x, kernel, bias):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + bias


def oracle_loss(params, batch):
  """conv 3x3 3->8, relu, conv 3x3 8->16, relu, global average pool, dense 16->10, mean cross-entropy."""
  x, y = batch
  h = jax.nn.relu(_conv(x, params['conv1']['kernel'], params['conv1']['bias']))
  h = jax.nn.relu(_conv(h, params['conv2']['kernel'], params['conv2']['bias']))
  logits = h.mean(axis=(1, 2)) @ params['dense']['kernel'] + params['dense']['bias']
  return prospr_jax.softmax_cross_entropy(logits, y)


class MLP(nn.Module):
  hidden: int = 12
  classes: int = 4

  @nn.compact
  def __call__(self, x):
    x = jnp.tanh(nn.Dense(self.hidden)(x))
    x = jnp.tanh(nn.Dense(self.hidden)(x))
    return nn.Dense(self.classes)(x)


class BatchNormCNN(nn.Module):
  """Two convs with BatchNorm (train mode uses batch statistics), pooled, one Dense."""
  classes: int = 3

  @nn.compact
  def __call__(self, x, train: bool = True):
    for features in (4, 6):
      x = nn.Conv(features, (3, 3), param_dtype=jnp.float64)(x)
      x = nn.BatchNorm(use_running_average=not train, param_dtype=jnp.float64)(x)
      x = nn.relu(x)
    return nn.Dense(self.classes, param_dtype=jnp.float64)(x.mean(axis=(1, 2)))


def classification_batches(key, num_batches, batch_size, input_shape, classes, dtype=jnp.float64):
  kx, ky = jax.random.split(key)
  x = jax.random.normal(kx, (num_batches, batch_size, *input_shape), dtype)
  y = jax.random.randint(ky, (num_batches, batch_size), 0, classes)
  return x, y


@functools.cache  # one loss_fn object per problem, so jit caches hit across tests
def mlp_problem(num_batches=4, seed=0):
  """(params, batches, loss_fn) for a 3-layer tanh MLP in float64."""
  model = MLP()
  batches = classification_batches(jax.random.key(seed), num_batches, 10, (6,), model.classes)
  variables = model.init(jax.random.key(seed + 1), batches[0][0])
  params = jax.tree.map(lambda p: p.astype(jnp.float64), variables['params'])
  return params, batches, prospr_jax.flax_loss_fn(model, variables)


@functools.cache
def bn_cnn_problem(num_batches=4, seed=0):
  """(params, batches, loss_fn) for a small conv net with BatchNorm in train mode, float64."""
  model = BatchNormCNN()
  batches = classification_batches(jax.random.key(seed), num_batches, 6, (5, 5, 2), model.classes)
  variables = model.init(jax.random.key(seed + 1), batches[0][0])
  return variables['params'], batches, prospr_jax.flax_loss_fn(model, variables)


def unrolled_meta_loss(params, batches, loss_fn, masks, *, lr=0.1, momentum=0.0, first_order=False):
  """L(w_M) written out by hand: a Python loop of SGD steps, torch's momentum buffer, no optax."""
  num_steps = jax.tree.leaves(batches)[0].shape[0] - 1
  w = prospr_jax.apply_mask(params, masks)
  velocity = jax.tree.map(jnp.zeros_like, w)
  for k in range(num_steps):
    grads = jax.grad(loss_fn)(w, jax.tree.map(lambda x: x[k], batches))
    if first_order:
      grads = jax.lax.stop_gradient(grads)
    velocity = jax.tree.map(lambda v, g: momentum * v + g, velocity, grads)
    w = jax.tree.map(lambda p, v: p - lr * v, w, velocity)
  return loss_fn(w, jax.tree.map(lambda x: x[num_steps], batches))
