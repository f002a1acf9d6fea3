"""Where the CPU time goes: a compiled program's FLOPs against this machine's matmul rate.

Measures the machine's f32 matmul rate (XLA's dot and numpy's BLAS, square and im2col-shaped), then compiles a
model's train step and ProsPr programs (``programs.py``) with a conv implementation, times them and prints achieved
GFLOP/s beside the matmul rate. FLOPs are counted on the jaxpr with every scan body times its trip count
(``flops.py``); XLA's cost analysis, which counts a loop body once, is printed beside it with its bytes accessed
and its temporary buffers.

  python benchmarks/roofline.py --model=vgg16 --batch_size=256 --conv_impl=auto
"""

from __future__ import annotations

import json
import pathlib
import time

import flops
import programs
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string('model', 'vgg16', 'Model from prospr_jax.models (CIFAR shapes).')
flags.DEFINE_integer('batch_size', 256, 'Batch size.')
flags.DEFINE_integer('steps', 3, 'M for the exact meta-gradient.')
flags.DEFINE_string('conv_impl', 'auto', 'Convolution implementation (prospr_jax/xla_cpu/conv_impl.py).')
flags.DEFINE_list('programs', ['train_step', 'exact', 'first_order'], 'Programs to time (exact_stored: ~16 GiB '
                  'for VGG-16 at batch 256).')
flags.DEFINE_string('out', 'benchmarks/results/roofline.json', 'Where the JSON goes.')


def _seconds(fn, *args, repeats=3):
  import jax
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return sorted(times)[len(times) // 2]


def matmul_rates() -> dict[str, float]:
  """GFLOP/s of f32 matmuls: square, and the im2col shape of VGG-16's 32x32x64 layer at batch 64."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  rates = {}
  for name, (m, k, n) in {'square 2048': (2048, 2048, 2048), 'im2col 65536x576x64': (65536, 576, 64),
                          'im2col 4096x2304x256': (4096, 2304, 256)}.items():
    a, b = np.random.default_rng(0).standard_normal((m, k), np.float32), np.ones((k, n), np.float32)
    dot = jax.jit(jnp.dot)
    rates[f'xla {name}'] = 2 * m * k * n / _seconds(dot, jnp.asarray(a), jnp.asarray(b)) / 1e9
    rates[f'numpy {name}'] = 2 * m * k * n / _seconds(np.dot, a, b) / 1e9
  return rates


def main(argv):
  del argv
  import jax
  rates = matmul_rates()
  for name, rate in rates.items():
    print(f'{name:<28} {rate:7.1f} GFLOP/s')
  rows = []
  for name in FLAGS.programs:
    fn, args = programs.build(name, FLAGS.model, FLAGS.batch_size, FLAGS.steps, FLAGS.conv_impl)
    counted = flops.count_flops(fn, *args)
    compiled = jax.jit(fn).lower(*args).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    seconds = _seconds(compiled, *args, repeats=1)
    xla_flops, nbytes = float(cost.get('flops', 0.0)), float(cost.get('bytes accessed', 0.0))
    memory = compiled.memory_analysis()
    temp = float(getattr(memory, 'temp_size_in_bytes', 0))
    rows.append(dict(program=name, seconds=seconds, gflop=counted / 1e9, xla_gflop_loop_bodies_once=xla_flops / 1e9,
                     xla_gbytes_loop_bodies_once=nbytes / 1e9, gflops_per_s=counted / seconds / 1e9,
                     temp_gib=temp / 2**30))
    print(f'{FLAGS.model} b{FLAGS.batch_size} {FLAGS.conv_impl} {name:<12} {seconds:8.2f} s  '
          f'{counted / 1e9:8.1f} GFLOP  {counted / seconds / 1e9:6.1f} GFLOP/s  (XLA, loop bodies once: '
          f'{xla_flops / 1e9:.1f} GFLOP, {nbytes / 1e9:.1f} GB accessed)  XLA temp buffers {temp / 2**30:.2f} GiB',
          flush=True)
  out = pathlib.Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({'flags': {k: FLAGS[k].value for k in ('model', 'batch_size', 'steps', 'conv_impl')},
                             'matmul_gflops_per_s': rates, 'programs': rows}, indent=2))
  print(f'wrote {out}')


if __name__ == '__main__':
  app.run(main)
