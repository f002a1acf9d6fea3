"""Deterministic GPU kernels: the same program gives the same bits from run to run (``config.deterministic``).

On a GPU, reductions (atomics), scatters and the convolution algorithms XLA picks
may differ between calls, and exact ProsPr amplifies the difference into another
mask. XLA's ``--xla_gpu_deterministic_ops`` makes them deterministic at a cost in
speed (docs/numerics.md). It is an XLA flag, read once when JAX starts its
backend, so it is set before anything runs. The CPU is deterministic anyway.
"""

from __future__ import annotations

import os

from jax._src import xla_bridge

FLAG = '--xla_gpu_deterministic_ops=true'


def is_requested() -> bool:
  """Whether this process asked XLA for deterministic GPU kernels."""
  return FLAG in os.environ.get('XLA_FLAGS', '').split()


def request_deterministic_ops() -> None:
  """Add ``FLAG`` to ``XLA_FLAGS``; RuntimeError if JAX's backend already started (it would be ignored)."""
  if is_requested():
    return
  if xla_bridge.backends_are_initialized():
    raise RuntimeError('deterministic ops must be requested before JAX starts its backend: set '
                       f'XLA_FLAGS="{FLAG}" in the environment, or pass --deterministic to the command')
  os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {FLAG}'.strip()
