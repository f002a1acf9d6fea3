"""Correctness tests run in float64 on small nets.

XLA's backend optimisations cost far more compile time than they save on
these tiny programs (about 3x on the meta-gradients), so tests compile at -O0;
results are the same, only speed differs. Subprocesses inherit the setting.

The run's programs go to a persistent compilation cache of its own, which the
xdist workers and every prune.py / train.py subprocess share (a subprocess run
of the default config otherwise compiles what the one before it compiled); the
controller removes it at the end, so each run compiles everything once.
"""

import gc
import os
import pathlib
import shutil
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/ is importable, as for prune.py
os.environ['XLA_FLAGS'] = ' '.join(
    [os.environ.get('XLA_FLAGS', ''), '--xla_backend_optimization_level=0']).strip()
_RUN_CACHE = None  # the controller's (or a run without xdist's) cache folder; workers inherit it through the env
if 'PYTEST_XDIST_WORKER' not in os.environ and 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _RUN_CACHE = tempfile.mkdtemp(prefix='prospr_jax_tests_jax_cache_')
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_RUN_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')

import jax  # noqa: E402  (after XLA_FLAGS: the backend reads them once)
import pytest  # noqa: E402

jax.config.update('jax_enable_x64', True)


def _memory_map_count() -> int | None:
  """How many memory mappings this process holds (Linux), else None."""
  try:
    with open('/proc/self/maps', 'rb') as f:
      return sum(1 for _ in f)
  except OSError:
    return None


def _memory_map_limit() -> int:
  try:
    return int(pathlib.Path('/proc/sys/vm/max_map_count').read_text())
  except (OSError, ValueError):
    return 65530


_MAP_BUDGET = _memory_map_limit() // 4


@pytest.fixture(autouse=True)
def _release_compiled_programs():
  """Drops JAX's compiled programs once they hold a quarter of the kernel's memory-mapping limit.

  Every program XLA:CPU compiles keeps its code in memory mappings until JAX's caches let it go (jax 0.12: about
  1,000 mappings for one second-order Winograd test run op by op). A long-lived xdist worker reached Linux's
  vm.max_map_count (65,530) about a third of the way through the suite and then failed in whatever came next: "can't
  start new thread", MemoryError, "Failed to materialize symbols", an abort inside XLA. Clearing the caches returns
  the mappings (measured: 1,634 -> 538); the next test recompiles what it needs.
  """
  yield
  count = _memory_map_count()
  if count is not None and count > _MAP_BUDGET:
    jax.clear_caches()
    gc.collect()


def pytest_sessionfinish(session):
  if _RUN_CACHE is not None:
    shutil.rmtree(_RUN_CACHE, ignore_errors=True)
