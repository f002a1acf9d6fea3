"""Where a structured criterion's channel gate sits: on the kernels before train-mode BatchNorm, or after it.

For VGG-11 (BatchNorm) on Fashion-MNIST pruning batches, in float64: structured
SNIP's raw ``|dL/dc|`` with the gate on the writers' kernels and after each
channel's normalisation, how each moves when BatchNorm's epsilon is multiplied
by 100, and how many of the top half of the channels the two gates share.

  python benchmarks/structured_gates.py --batch_size=32
"""

from __future__ import annotations

import jax

jax.config.update('jax_enable_x64', True)

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from mask_comparison import flat, kept_overlap, pruning_batches

import prospr_jax
from prospr_jax.channels import scores as channel_scores
from prospr_jax.criteria import scores as scores_lib
from prospr_jax.criteria.snip import snip_gradient
from prospr_jax.models import get_model, plans, vgg

_BATCH = flags.DEFINE_integer('batch_size', 32, 'Pruning batch size.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Fashion-MNIST IDX folder (default: the Debian package\'s).')


def raw_snip(params, batches, *, loss_fn, structured, prunable):
  mask = scores_lib.data_mask_variables(params, batches, loss_fn=loss_fn, structured=structured, prunable=prunable)
  return snip_gradient(params, batches, mask, loss_fn=loss_fn)


def raw_scores(images, labels, gate: str, epsilon: float) -> dict[str, np.ndarray]:
  vgg.batch_norm = lambda train: nn.BatchNorm(use_running_average=not train, momentum=0.9, use_fast_variance=False,
                                              epsilon=epsilon)
  model = get_model('vgg11', 10)
  variables = jax.tree.map(lambda x: x.astype(jnp.float64), model.init(jax.random.key(0), images[:1], train=False))
  plan = plans.channel_plan(model, variables['params'])
  batches = (images[None].astype(jnp.float64), labels[None])
  return channel_scores.score_channels(raw_snip, plan, variables['params'], batches, gate=gate,
                                       loss_fn=prospr_jax.flax_loss_fn(model, variables))


def main(argv):
  del argv
  images, labels = pruning_batches(_DATA_DIR.value, _BATCH.value, 0)
  images, labels = images[0], labels[0]
  rows = {(gate, eps): raw_scores(images, labels, gate, eps)
          for gate in (scores_lib.KERNEL, scores_lib.OUTPUT) for eps in (1e-5, 1e-3)}
  for gate in (scores_lib.KERNEL, scores_lib.OUTPUT):
    base, bigger = flat(rows[(gate, 1e-5)]), flat(rows[(gate, 1e-3)])
    print(f'gate on the {gate:<6}: |dL/dc| {np.abs(base).min():.1e} to {np.abs(base).max():.1e}; '
          f'x100 epsilon multiplies their sum by {np.abs(bigger).sum() / np.abs(base).sum():.3g}')
  shared = kept_overlap({k: np.abs(v) for k, v in rows[(scores_lib.KERNEL, 1e-5)].items()},
                        {k: np.abs(v) for k, v in rows[(scores_lib.OUTPUT, 1e-5)].items()}, 0.5)
  print(f'top half of the channels shared by the two gates: {shared:.1%}')


if __name__ == '__main__':
  app.run(main)
