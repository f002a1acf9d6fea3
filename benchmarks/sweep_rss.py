"""Resident memory of one sweep process, cell after cell: does it stay flat?

  python benchmarks/sweep_rss.py [--seeds=2] [--release=criteria|none|all]

Runs a sweep of one-epoch cells on ``configs/default.py`` (SmallCNN on the 8x8 digits): six criteria x four
sparsities x ``--seeds`` seeds plus the dense cell per seed (50 cells for two seeds), in this one process, as
``sweep.py`` runs them (persistent compilation cache in the sweep's folder). After each cell it writes one JSON line
to ``benchmarks/results/sweep_rss_<release>.jsonl``: the cell, its seconds, RSS (``VmRSS``, after ``gc`` and
``malloc_trim``), the live JAX arrays (count, MiB) and Python's object count; then a summary. The first seed meets
every program once; the second seed runs the same programs again, so its RSS shows what a long sweep keeps per cell.

``--release``: what the sweep drops after each cell. ``criteria`` (what ``sweep.runner`` does): the criteria's
compiled programs; ``none``: nothing (as before the fix); ``all``: every cache (``jax.clear_caches()``).
"""

from __future__ import annotations

import argparse
import gc
import json
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CRITERIA = 'prospr,snip,grasp,synflow,magnitude,random'
SPARSITIES = '0.5,0.8,0.9,0.95'


def rss_mib() -> float:
  status = pathlib.Path('/proc/self/status').read_text()
  return int(next(line for line in status.splitlines() if line.startswith('VmRSS:')).split()[1]) / 1024


def summary(lines: list[dict], per_seed: int, release: str, version: str) -> dict:
  """RSS after the first seed (every program met once) and over the later seeds (the same programs again: what a
  long sweep keeps per cell), and the mean cell time of each."""
  first, later = lines[:per_seed], lines[per_seed:]
  rss = [line['rss_mib'] for line in later]
  mean = lambda part: round(sum(line['seconds'] for line in part) / len(part), 2) if part else None
  return {'summary': True, 'release': release, 'cells': len(lines), 'jax': version,
          'rss_after_cell_1_mib': lines[0]['rss_mib'], 'rss_after_first_seed_mib': first[-1]['rss_mib'],
          'later_seeds_min_mib': min(rss, default=None), 'later_seeds_max_mib': max(rss, default=None),
          'later_seeds_growth_per_cell_mib': round((rss[-1] - first[-1]['rss_mib']) / len(rss), 2) if rss else None,
          'first_seed_mean_seconds': mean(first), 'later_seeds_mean_seconds': mean(later)}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--seeds', type=int, default=2)
  parser.add_argument('--release', choices=('criteria', 'none', 'all'), default='criteria')
  parser.add_argument('--out', default=None)
  args = parser.parse_args()

  import jax

  from configs import default
  from prospr_jax import sweep
  from prospr_jax.sweep import runner
  from prospr_jax.xla_cpu import host_memory

  host_memory.release_heap_after_compiles()  # as sweep.py
  release = {'criteria': runner.release_compiled_programs, 'none': lambda: None, 'all': jax.clear_caches}[args.release]
  config = default.get_config()
  config.num_epochs = 1
  lines, ran, start = [], [], time.perf_counter()
  run_cell = runner.cells_lib.run_cell

  def timed(cell, base, workdir):
    seconds = run_cell(cell, base, workdir)
    ran.append((str(cell), seconds))
    return seconds

  def release_then_measure():
    release()
    gc.collect()
    host_memory.release_freed_heap()
    arrays = jax.live_arrays()
    name, seconds = ran[-1]
    line = {'cell': len(lines) + 1, 'name': name, 'seconds': round(seconds, 2), 'rss_mib': round(rss_mib(), 1),
            'live_arrays': len(arrays), 'live_array_mib': round(sum(a.nbytes for a in arrays) / 2**20, 2),
            'python_objects': len(gc.get_objects()), 'elapsed': round(time.perf_counter() - start, 1)}
    lines.append(line)
    print(json.dumps(line), flush=True)

  runner.cells_lib.run_cell = timed
  runner.release_compiled_programs = release_then_measure  # what the sweep calls after each cell
  with tempfile.TemporaryDirectory() as workdir:
    sweep.enable_compilation_cache(pathlib.Path(workdir) / 'jax_cache')  # as sweep.py
    grid = sweep.make_grid(CRITERIA, SPARSITIES, args.seeds)
    sweep.run_sweep(config, CRITERIA, SPARSITIES, args.seeds, workdir)
  result = summary(lines, len(grid.cells()) // args.seeds, args.release, jax.__version__)
  print(json.dumps(result), flush=True)
  out = pathlib.Path(args.out or ROOT / f'benchmarks/results/sweep_rss_{args.release}.jsonl')
  out.write_text(''.join(json.dumps(line) + '\n' for line in [*lines, result]))


if __name__ == '__main__':
  main()
