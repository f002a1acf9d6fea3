"""Correctness tests run in float64 on small nets.

XLA's backend optimisations cost far more compile time than they save on
these tiny programs (about 3x on the meta-gradients), so tests compile at -O0;
results are the same, only speed differs. Subprocesses inherit the setting.
"""

import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/ is importable, as for prune.py
os.environ['XLA_FLAGS'] = ' '.join(
    [os.environ.get('XLA_FLAGS', ''), '--xla_backend_optimization_level=0']).strip()

import jax  # noqa: E402  (after XLA_FLAGS: the backend reads them once)

jax.config.update('jax_enable_x64', True)
