"""Every registered criterion on one config at one sparsity, one run each: a table of test accuracy.

  python benchmarks/criteria_table.py --config configs/default.py --sparsity=0.95

Writes each run under --workdir/<criterion>/ (rerunning resumes) and the table to --workdir/table.md.
"""

from __future__ import annotations

import pathlib
import time

from absl import app, flags
from ml_collections import config_flags

import prospr_jax
from prospr_jax.harness import entry, experiment

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/default.py', 'Experiment config file.')
_SPARSITY = flags.DEFINE_float('sparsity', 0.95, 'Sparsity for every criterion.')
_CRITERIA = flags.DEFINE_list('criteria', sorted(prospr_jax.CRITERIA), 'Criteria to run.')
_WORKDIR = flags.DEFINE_string('workdir', 'workdir/criteria_table', 'Output folder.')


def main(argv):
  del argv
  entry.configure_logging()
  root = pathlib.Path(_WORKDIR.value)
  rows = []
  for index, name in enumerate(_CRITERIA.value):
    config = _CONFIG.value.copy_and_resolve_references()
    config.criterion = name
    config.prune.sparsity = _SPARSITY.value
    config.prune.keep_one_per_layer = True  # a criterion that would empty a layer still gets trained
    config.compare_dense = index == 0
    start = time.perf_counter()
    results = experiment.prune_and_train(config, root / name)
    pruning = (root / name / 'pruning.json').read_text()
    rows.append((name, results, time.perf_counter() - start, pruning))
    if 'dense' in results:
      rows.insert(0, ('dense', {'pruned': results['dense']}, 0.0, ''))
  lines = [f'{config.model} on {config.dataset}, sparsity {_SPARSITY.value:.0%}, {config.num_epochs} epochs, '
           f'seed {config.seed}, one run each', '',
           '| criterion | top-1 | top-5 | wall s (prune + train) |', '|---|---|---|---|']
  for name, results, seconds, _ in rows:
    row = results['pruned']
    lines.append(f'| {name} | {row["eval_top1"]:.2%} | {row["eval_top5"]:.2%} | {seconds:.0f} |')
  table = '\n'.join(lines)
  (root / 'table.md').write_text(table + '\n')
  print(table)


if __name__ == '__main__':
  app.run(main)
