"""Does a multi-process CPU run finish when its programs come from a persistent compilation cache?

Starts the same two-process `prune.py` run (gloo collectives over loopback, D CPU devices per process, the test
suite's small run) several times, with or without one shared cache folder, and prints how each ended: finished
(with its seconds) or hung (killed after --timeout). The first run with a cache compiles and fills it; the later
ones load from it. With jax 0.12.1 the later ones hung in the train step's all-reduce, which is why
`sweep.enable_compilation_cache` does nothing in a multi-process CPU run.

  python benchmarks/multiprocess_cache.py --runs=3 --cache       # a fresh cache shared by the runs
  python benchmarks/multiprocess_cache.py --runs=3 --nocache
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
_RUNS = flags.DEFINE_integer('runs', 3, 'Two-process runs, one after another.')
_DEVICES = flags.DEFINE_integer('devices', 2, 'CPU devices per process.')
_CACHE = flags.DEFINE_bool('cache', True, 'Share one fresh persistent compilation cache folder between the runs.')
_TIMEOUT = flags.DEFINE_integer('timeout', 150, 'Seconds before a run counts as hung and is killed.')
SMALL_RUN = ['--config=configs/default.py', '--config.num_epochs=1', '--config.lr_milestones=()',
             '--config.compare_dense=False', '--config.prune.num_steps=1', '--config.prune.batch_size=16',
             '--config.batch_size=64', '--config.eval_batch_size=128']


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def run_once(env: dict[str, str], workdir: str) -> float | None:
  """Seconds the two processes took, or None when they were still running after the timeout (then killed)."""
  port, start = free_port(), time.perf_counter()
  procs = [subprocess.Popen([sys.executable, 'prune.py', *SMALL_RUN, f'--workdir={workdir}',
                             f'--coordinator_address=localhost:{port}', '--num_processes=2', f'--process_id={k}'],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
           for k in range(2)]
  try:
    codes = [p.wait(timeout=_TIMEOUT.value) for p in procs]
  except subprocess.TimeoutExpired:
    return None
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  if any(codes):
    raise RuntimeError(f'a process exited with {codes}: rerun one by hand to see why')
  return time.perf_counter() - start


def main(argv):
  del argv
  import jax
  env = {key: value for key, value in os.environ.items() if not key.startswith('JAX_')}
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={_DEVICES.value}'
  with tempfile.TemporaryDirectory() as tmp:
    if _CACHE.value:
      env.update(JAX_COMPILATION_CACHE_DIR=f'{tmp}/jax_cache', JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
    print(f'jax {jax.__version__}, 2 processes x {_DEVICES.value} CPU devices, '
          f'{"one shared compilation cache" if _CACHE.value else "no compilation cache"}', flush=True)
    for i in range(_RUNS.value):
      seconds = run_once(env, f'{tmp}/run_{i}')
      print(f'run {i + 1}: ' + (f'finished in {seconds:.1f} s' if seconds is not None else
                                f'hung (killed after {_TIMEOUT.value} s)'), flush=True)


if __name__ == '__main__':
  app.run(main)
