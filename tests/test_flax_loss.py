"""flax_loss_fn turns a Flax module into a criterion's loss_fn, BatchNorm in train mode."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from nets import BatchNormCNN

import prospr_jax


def test_batchnorm_uses_batch_statistics_and_discards_the_running_ones():
  model = BatchNormCNN()
  x = jax.random.normal(jax.random.key(0), (6, 5, 5, 2)) * 3 + 1
  y = jnp.arange(6) % 3
  variables = model.init(jax.random.key(1), x)
  loss_fn = prospr_jax.flax_loss_fn(model, variables)
  logits, _ = model.apply(variables, x, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(loss_fn(variables['params'], (x, y)), prospr_jax.softmax_cross_entropy(logits, y))
  eval_logits = model.apply(variables, x, train=False)
  assert not np.allclose(logits, eval_logits)  # train mode really differs from the running averages
  jax.tree.map(np.testing.assert_array_equal, variables['batch_stats'], model.init(jax.random.key(1), x)['batch_stats'])


def test_a_dict_batch_with_image_and_label_works_too():
  model = nn.Dense(3)
  x, y = jnp.ones((4, 2)), jnp.array([0, 1, 2, 0])
  variables = model.init(jax.random.key(0), x)
  loss_fn = prospr_jax.flax_loss_fn(model, variables)
  assert loss_fn(variables['params'], {'image': x, 'label': y}) == loss_fn(variables['params'], (x, y))
