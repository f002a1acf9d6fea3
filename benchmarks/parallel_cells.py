"""Cells per hour of a small sweep: one process running the cells one at a time, against N cell processes at once.

Each setting runs the same grid from an empty workdir (no compilation cache carried over), timed end to end
(process start, compiles, training, aggregation).

  python benchmarks/parallel_cells.py --parallel=1,2 --criteria=magnitude,random --sparsities=0.5,0.9
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tempfile
import time

from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
_PARALLEL = flags.DEFINE_list('parallel', ['1', '2'], '--parallel_cells values to time (1: the in-process sweep).')
_CONFIG = flags.DEFINE_string('config', 'configs/default.py', 'Config of every cell.')
_CRITERIA = flags.DEFINE_string('criteria', 'magnitude,random', 'The sweep\'s criteria.')
_SPARSITIES = flags.DEFINE_string('sparsities', '0.5,0.9', 'The sweep\'s sparsities.')
_SEEDS = flags.DEFINE_integer('seeds', 1, 'Seeds.')
_EPOCHS = flags.DEFINE_integer('epochs', 1, 'Epochs per cell.')


def main(argv):
  del argv
  cells = len(_CRITERIA.value.split(',')) * len(_SPARSITIES.value.split(',')) * _SEEDS.value + _SEEDS.value
  print(f'# {_CONFIG.value}, {cells} cells ({_CRITERIA.value} x {_SPARSITIES.value} x {_SEEDS.value} seeds + dense), '
        f'{_EPOCHS.value} epoch(s) each, {time.strftime("%Y-%m-%d")}')
  print(f'{"parallel_cells":>14} {"seconds":>8} {"cells/hour":>10}')
  for n in map(int, _PARALLEL.value):
    with tempfile.TemporaryDirectory() as workdir:
      start = time.perf_counter()
      subprocess.run([sys.executable, 'sweep.py', f'--config={_CONFIG.value}', f'--criteria={_CRITERIA.value}',
                      f'--sparsities={_SPARSITIES.value}', f'--seeds={_SEEDS.value}',
                      f'--config.num_epochs={_EPOCHS.value}', '--config.lr_milestones=()', f'--parallel_cells={n}',
                      f'--workdir={workdir}'], cwd=ROOT, check=True, capture_output=True)
      seconds = time.perf_counter() - start
    print(f'{n:>14} {seconds:>8.1f} {3600 * cells / seconds:>10.0f}', flush=True)


if __name__ == '__main__':
  app.run(main)
