"""``sweep.py --parallel_cells=N``: the unfinished cells as N processes at a time, sharing the device.

Each cell runs the command ``--print_commands`` prints for it, with this Python. Each of the N slots gets a share
of the device: on a GPU ``XLA_PYTHON_CLIENT_MEM_FRACTION`` = 0.9 / N (JAX preallocates that fraction), on a CPU
1 / N of the cores (the process's CPU affinity, which sizes XLA's thread pool). The cells of the references that
prune after training wait for the others and run one at a time: they start from their seed's dense cell, and one
seed's iterative rounds run in order. A cell's output goes to
``<workdir>/logs/cell_<k>.log``; a cell that fails is named, with its log, once the others are done.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Sequence

GPU_MEMORY = 0.9  # the fraction of a GPU's memory the N processes share


@dataclasses.dataclass(frozen=True)
class Slot:
  """One of the N places a cell process runs in: its environment and its CPU cores."""
  env: dict[str, str]
  cores: tuple[int, ...]


def slots(n: int, backend: str, cores: Sequence[int] | None = None) -> list[Slot]:
  """The N slots' shares of the device: GPU memory on a GPU (every core for each), the cores split on a CPU."""
  if n < 1:
    raise ValueError(f'--parallel_cells must be >= 1, got {n}')
  cores = sorted(os.sched_getaffinity(0) if cores is None else cores)
  if backend == 'gpu':
    return [Slot({'XLA_PYTHON_CLIENT_MEM_FRACTION': f'{GPU_MEMORY / n:.3f}'}, tuple(cores))] * n
  if n <= len(cores):
    share = len(cores) // n
    return [Slot({}, tuple(cores[i * share:(i + 1) * share] if i < n - 1 else cores[i * share:])) for i in range(n)]
  return [Slot({}, (cores[i % len(cores)],)) for i in range(n)]


def _start(command: str, slot: Slot, log: pathlib.Path) -> subprocess.Popen:
  log.parent.mkdir(parents=True, exist_ok=True)
  with open(log, 'w') as out:
    return subprocess.Popen(command, shell=True, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, **slot.env},
                            preexec_fn=lambda: os.sched_setaffinity(0, slot.cores))


def run(commands: Sequence[str], n: int, workdir: pathlib.Path, backend: str,
        deadline: float | None = None, *, after: Sequence[bool] = ()) -> tuple[list[str], int]:
  """Run the cells' ``commands`` N at a time; those whose ``after`` is true (the references' cells) after the rest,
  one at a time.

  Returns the failures (one line each: the command's log and exit code) and the number of commands not started
  because ``deadline`` (a ``time.time()``) passed.
  """
  shares = slots(n, backend)
  failures: list[str] = []
  logs = workdir / 'logs'
  waits = list(after) + [False] * (len(commands) - len(after))
  waves = [[(k, c) for k, c in enumerate(commands) if waits[k] == last] for last in (False, True)]
  skipped = 0
  for wave, width in zip(waves, (n, 1)):
    running: dict[int, tuple[subprocess.Popen, int]] = {}  # slot -> (process, command number)
    pending = list(wave)
    try:
      while pending or running:
        for index, (process, number) in list(running.items()):
          if process.poll() is not None:
            del running[index]
            if process.returncode:
              failures.append(f'{logs / f"cell_{number}.log"} (exit code {process.returncode}): {commands[number]}')
        while pending and len(running) < width:
          if deadline is not None and time.time() > deadline:
            skipped += len(pending)
            pending = []
            break
          free = next(i for i in range(len(shares)) if i not in running)
          number, command = pending.pop(0)
          running[free] = (_start(command, shares[free], logs / f'cell_{number}.log'), number)
        time.sleep(0.2)
    finally:  # a stop (Ctrl-C) ends the cell processes this sweep started: each resumes on a rerun
      for process, _ in running.values():
        if process.poll() is None:
          process.terminate()
          process.wait()
  return failures, skipped


def backend() -> str:
  """The backend a cell process will use, asked of a fresh process: the sweep's own process starts none (on a GPU
  it would hold memory the cells need)."""
  probe = subprocess.run([sys.executable, '-c', 'import jax; print(jax.default_backend())'], capture_output=True,
                         text=True, check=True)
  return probe.stdout.strip().splitlines()[-1]
