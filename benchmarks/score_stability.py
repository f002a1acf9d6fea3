"""How well-conditioned is the exact ProsPr meta-gradient? float32 against float64, and against a tiny input change.

For each model and M: the meta-gradient ``dL(w_M)/dc`` on the same Fashion-MNIST
batches (a fixed shuffle of the training set, standardized) computed in float32,
in float64, and in float64 with every input pixel scaled by ``1 + 1e-6``. It
reports the relative L2 differences (float32 vs float64: the rounding error of
the float32 result; float64 perturbed vs float64: how much the function itself
moves) and the overlap of the kept weights at 90% and 98% between float32 and
float64. A well-conditioned computation shows differences near 1e-6.

``--convs`` repeats the float32 computation with other convolutions (float64 is computed once, with the first):
the rounding of each implementation, e.g. ``auto`` (Winograd F(2x2, 3x3) on wide layers) against ``im2col`` (a
direct convolution's rounding) and ``auto:winograd4`` (auto with F(4x4, 3x3) where the output has 4x4).

  python benchmarks/score_stability.py --models=lenet300_100,lenet5,resnet20,vgg16 --steps=0,3 --batch_size=32
  python benchmarks/score_stability.py --models=resnet20,vgg16 --steps=0,1,3 --convs=im2col,auto,auto:winograd4
  python benchmarks/score_stability.py --models=resnet20 --width=8 --steps=3 --batch_size=256 --convs=lax,auto
"""

from __future__ import annotations

import contextlib
import json
import pathlib

import jax

jax.config.update('jax_enable_x64', True)

import jax.numpy as jnp
import numpy as np
from absl import app, flags
from mask_comparison import flat, kept_overlap, pruning_batches

import prospr_jax
from prospr_jax.models import get_model, init_variables
from prospr_jax.xla_cpu import conv_impl

_MODELS = flags.DEFINE_list('models', ['lenet300_100', 'lenet5', 'resnet20', 'vgg16'], 'Models taking 28x28x1 images.')
_STEPS = flags.DEFINE_list('steps', ['0', '3'], 'M values (0 = SNIP).')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Pruning batch size.')
_WIDTH = flags.DEFINE_integer('width', None, 'The first stage\'s channels of a ResNet (e.g. 8: the numerics study\'s '
                              'half-width ResNet-20); default: the model\'s own.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Fashion-MNIST IDX folder (default: the Debian package\'s).')
_CONVS = flags.DEFINE_list('convs', ['auto'], 'Convolutions for the float32 meta-gradient: conv_impl names, or '
                           'auto:winograd4 (auto with F(4x4, 3x3) where it fits).')
_OUT = flags.DEFINE_string('out', 'benchmarks/results/score_stability.json', 'JSON results.')
PERTURBATION = 1e-6


def meta_gradient(model, variables, images, labels, dtype):
  """The exact ProsPr meta-gradient with every parameter, state and image cast to ``dtype``."""
  cast = jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, variables)
  loss_fn = prospr_jax.flax_loss_fn(model, cast)
  return prospr_jax.prospr_meta_gradient(cast['params'], (images.astype(dtype), labels), loss_fn=loss_fn)


def relative(a, b) -> float:
  fa, fb = flat(a), flat(b)
  return float(np.linalg.norm(fa - fb) / np.linalg.norm(fb))


@contextlib.contextmanager
def convolution(name: str):
  """The model's ``conv_general_dilated`` for ``name``; ``auto:winograd4`` lets auto take 4x4 Winograd tiles."""
  tiles = conv_impl.WINOGRAD_TILES
  conv_impl.WINOGRAD_TILES = (4, 2) if name == 'auto:winograd4' else tiles  # read when the model is traced
  try:
    yield conv_impl.resolve_conv_impl(name.split(':')[0])
  finally:
    conv_impl.WINOGRAD_TILES = tiles


def measure(name: str, steps: int) -> list[dict]:
  images, labels = pruning_batches(_DATA_DIR.value, _BATCH.value, steps)
  rows, g64, g64p = [], None, None
  for conv_name in _CONVS.value:
    with convolution(conv_name) as conv_fn:
      width = {} if _WIDTH.value is None else {'width': _WIDTH.value}
      model = get_model(name, 10, conv_general_dilated=conv_fn, **width)
      variables = init_variables(model, (28, 28, 1), jax.random.key(0))
      g32 = meta_gradient(model, variables, images, labels, jnp.float32)
      if g64 is None:
        g64 = meta_gradient(model, variables, images, labels, jnp.float64)
        g64p = meta_gradient(model, variables, images * (1 + PERTURBATION), labels, jnp.float64)
    rows.append({'model': name, 'width': _WIDTH.value, 'steps': steps, 'batch_size': _BATCH.value, 'conv': conv_name,
                 'float32_vs_float64': relative(g32, g64), 'float64_perturbed_vs_float64': relative(g64p, g64),
                 'kept_overlap_90': kept_overlap(g32, g64, 0.9), 'kept_overlap_98': kept_overlap(g32, g64, 0.98)})
    print(json.dumps(rows[-1]), flush=True)
  return rows


def main(argv):
  del argv
  rows = []
  for name in _MODELS.value:
    for steps in map(int, _STEPS.value):
      rows.extend(measure(name, steps))
  out = pathlib.Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({'device': jax.devices()[0].device_kind, 'jax': jax.__version__,
                             'perturbation': PERTURBATION, 'rows': rows}, indent=1))
  print('| model | M | float32 conv | rel. diff. float32 vs float64 | rel. diff. float64, inputs x (1 + 1e-6) | '
        'kept overlap f32/f64 at 90% | at 98% |\n|---|---|---|---|---|---|---|')
  for r in rows:
    print(f'| {r["model"]} | {r["steps"]} | {r["conv"]} | {r["float32_vs_float64"]:.1e} | '
          f'{r["float64_perturbed_vs_float64"]:.1e} | {r["kept_overlap_90"]:.3f} | {r["kept_overlap_98"]:.3f} |')


if __name__ == '__main__':
  app.run(main)
