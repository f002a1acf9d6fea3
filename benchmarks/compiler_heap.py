"""How much of a process's peak is heap the XLA compiler freed but glibc kept, A/B in two processes.

  python benchmarks/compiler_heap.py [program [conv_impl]]    # defaults: train_step auto:64 (VGG-16, b256, M = 3)

Each side compiles the program with (``trim``) or without (``keep``) the library's
``host_memory.release_heap_after_compiles``, which calls glibc's ``malloc_trim(0)`` once XLA has compiled, then runs
it twice: RSS before the runs and the peak of the runs (``rss.py``). prune.py, train.py and sweep.py run as ``trim``.
"""

import json
import pathlib
import subprocess
import sys


def _rss_gib() -> float:
  status = pathlib.Path('/proc/self/status').read_text()
  return int(next(line for line in status.splitlines() if line.startswith('VmRSS:')).split()[1]) / 2**20


def measure(program: str, conv: str, trim: bool) -> dict:
  import jax
  import programs
  import rss

  from prospr_jax.xla_cpu import host_memory
  if trim:
    host_memory.release_heap_after_compiles()
  fn, args = programs.build(program, 'vgg16', 256, 3, conv)
  compiled = jax.jit(fn).lower(*args).compile()
  before_run_gib = _rss_gib()
  rss.reset_peak()
  for _ in range(2):
    jax.block_until_ready(compiled(*args))
  return {'program': program, 'conv': conv, 'heap': 'trim' if trim else 'keep',
          'rss_before_run_gib': before_run_gib, 'run_peak_gib': rss.peak_since_reset_bytes() / 2**30,
          'temp_gib': compiled.memory_analysis().temp_size_in_bytes / 2**30}


def main() -> None:
  if len(sys.argv) == 5 and sys.argv[1] == '--worker':
    print(json.dumps(measure(sys.argv[2], sys.argv[3], sys.argv[4] == 'trim')), flush=True)
    return
  program, conv = (sys.argv[1:] + ['train_step', 'auto:64'][len(sys.argv) - 1:])[:2]
  for heap in ('keep', 'trim'):
    done = subprocess.run([sys.executable, __file__, '--worker', program, conv, heap], capture_output=True, text=True,
                          check=False)
    print(done.stdout.strip().splitlines()[-1] if done.returncode == 0 else done.stderr[-2000:], flush=True)


if __name__ == '__main__':
  main()
