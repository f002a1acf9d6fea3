"""Does the accelerator's float32 matmul precision move ProsPr's masks? Default vs ``highest``, side by side.

On GPUs JAX's default float32 precision lets convolutions and matmuls use
TF32 (10-bit mantissa inputs). This computes the exact ProsPr meta-gradient
(VGG-16, M = 3) at ``--precisions`` (each a separately compiled program) and a
second call of the first one (run-to-run noise: GPU reductions need not be
deterministic), then reports, against the ``highest`` scores: the relative L2
difference of the scores and the overlap of the kept weights at each sparsity
(|kept_a & kept_b| / |kept_b|). On CPU every precision computes true float32.

  python benchmarks/matmul_precision.py --data_dir=/usr/share/datasets/fashion-mnist --out=precision.json
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import numpy as np
from absl import app, flags
from mask_comparison import flat, kept_overlap, pruning_batches  # benchmarks/ is the script's folder

import prospr_jax
from prospr_jax.models import get_model, init_variables
from prospr_jax.xla_cpu import conv_impl

_MODEL = flags.DEFINE_string('model', 'vgg16', 'A model of prospr_jax.models taking 28x28x1 Fashion-MNIST images.')
_BATCH = flags.DEFINE_integer('batch_size', 512, 'Pruning batch size (the paper: 512 on CIFAR).')
_STEPS = flags.DEFINE_integer('steps', 3, 'M, the inner steps.')
_PRECISIONS = flags.DEFINE_list('precisions', ['default', 'high', 'highest'], 'jax_default_matmul_precision values.')
_SPARSITIES = flags.DEFINE_list('sparsities', ['0.9', '0.98'], 'Sparsities at which to compare the kept weights.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Fashion-MNIST IDX folder (default: the Debian package\'s).')
_OUT = flags.DEFINE_string('out', 'benchmarks/results/matmul_precision.json', 'JSON results.')


def main(argv):
  del argv
  model = get_model(_MODEL.value, 10, conv_general_dilated=conv_impl.resolve_conv_impl('auto'))
  variables = init_variables(model, (28, 28, 1), jax.random.key(0))
  loss_fn = prospr_jax.flax_loss_fn(model, variables)
  batches = pruning_batches(_DATA_DIR.value, _BATCH.value, _STEPS.value)
  saliency = lambda params, batches: prospr_jax.prospr_saliency(params, batches, loss_fn=loss_fn)
  scores, seconds = {}, {}
  for precision in _PRECISIONS.value:
    with jax.default_matmul_precision(precision):
      compiled = jax.jit(saliency).lower(variables['params'], batches).compile()
      jax.block_until_ready(compiled(variables['params'], batches))
      start = time.perf_counter()
      scores[precision] = jax.block_until_ready(compiled(variables['params'], batches))
      seconds[precision] = time.perf_counter() - start
      if precision == _PRECISIONS.value[0]:
        scores[precision + ' (again)'] = jax.block_until_ready(compiled(variables['params'], batches))
  reference = scores['highest'] if 'highest' in scores else scores[_PRECISIONS.value[-1]]
  ref = flat(reference)
  rows = []
  for name, s in scores.items():
    row = {'precision': name, 'seconds': seconds.get(name),
           'relative_l2_difference': float(np.linalg.norm(flat(s) - ref) / np.linalg.norm(ref)),
           **{f'kept_overlap_{sp}': kept_overlap(s, reference, float(sp)) for sp in _SPARSITIES.value}}
    print(json.dumps(row), flush=True)
    rows.append(row)
  out = pathlib.Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({'device': jax.devices()[0].device_kind, 'jax': jax.__version__, 'model': _MODEL.value,
                             'batch_size': _BATCH.value, 'steps': _STEPS.value, 'reference': 'highest',
                             'rows': rows}, indent=1))
  print('| precision | exact ProsPr s | rel. L2 diff. of scores vs highest | '
        + ' | '.join(f'kept overlap at {float(sp):.0%}' for sp in _SPARSITIES.value) + ' |')
  print('|---|---|---|' + '---|' * len(_SPARSITIES.value))
  for r in rows:
    secs = '-' if r['seconds'] is None else f'{r["seconds"]:.3f}'
    print(f'| {r["precision"]} | {secs} | {r["relative_l2_difference"]:.2e} | '
          + ' | '.join(f'{r[f"kept_overlap_{sp}"]:.4f}' for sp in _SPARSITIES.value) + ' |')


if __name__ == '__main__':
  app.run(main)
