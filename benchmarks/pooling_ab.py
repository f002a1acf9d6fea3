"""VGG-16 (CIFAR, M = 3) with ``nn.max_pool`` against ``pooling.max_pool_2x2`` (VGG's pool on CPU), A/B.

  python benchmarks/pooling_ab.py [conv_impl [batch_size [width]]] > benchmarks/results/pooling_ab_vgg16_b256.jsonl
  python benchmarks/pooling_ab.py auto 16 0.5 > benchmarks/results/pooling_ab_vgg16_half_b16.jsonl

Defaults: ``auto``, batch 256, full width (``width`` is VGG's channel multiplier).

Each (program, pool) runs in its own process, one after the other (train step A B, first order B A, exact A B, so
a drift in the machine's load does not favour one side): seconds of each timed call after a warm-up, XLA's
temporaries, and the peak RSS of the timed calls (``rss.py``). One JSON line per run.
"""

import json
import os
import subprocess
import sys
import time

PLAN = (('train_step', 3, ('nn', '2x2')), ('first_order', 2, ('2x2', 'nn')), ('exact', 1, ('nn', '2x2')))


def measure(program: str, pool: str, conv: str, repeats: int, batch_size: int, width: float) -> dict:
  import jax
  import programs
  import rss
  from flax import linen

  from prospr_jax.xla_cpu import pooling
  max_pool = pooling.max_pool_2x2 if pool == '2x2' else lambda x: linen.max_pool(x, (2, 2), (2, 2))
  fn, args = programs.build(program, 'vgg16', batch_size, 3, conv, max_pool=max_pool, width=width)
  compiled = jax.jit(fn).lower(*args).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes / 2**30
  jax.block_until_ready(compiled(*args))
  rss.reset_peak()
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    seconds.append(time.perf_counter() - start)
  return {'program': program, 'pool': pool, 'conv': conv, 'batch_size': batch_size, 'width': width,
          'seconds': seconds, 'temp_gib': temp,
          'run_peak_gib': rss.peak_since_reset_bytes() / 2**30, 'load': os.getloadavg()[0]}


def main() -> None:
  if len(sys.argv) == 7:  # a worker: program, pool, conv, repeats, batch_size, width
    program, pool, conv, repeats, batch_size, width = sys.argv[1:]
    print(json.dumps(measure(program, pool, conv, int(repeats), int(batch_size), float(width))), flush=True)
    return
  conv, batch_size, width = (sys.argv[1:] + ['auto', '256', '1.0'][len(sys.argv) - 1:])[:3]
  for program, repeats, pools in PLAN:
    for pool in pools:
      done = subprocess.run([sys.executable, __file__, program, pool, conv, str(repeats), batch_size, width],
                            capture_output=True, text=True, check=False)
      print(done.stdout.strip().splitlines()[-1] if done.returncode == 0 else done.stderr[-2000:], flush=True)


if __name__ == '__main__':
  main()
