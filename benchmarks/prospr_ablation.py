"""ProsPr's own knobs on one benchmark: M, inner momentum, exact vs first-order, pruning batch size.

Each variant is a sweep (``sweep.py``) of ``criterion=prospr`` with one override, on the same sparsities, seeds
and training recipe; M = 0 is SNIP. Runs the variants one after the other (finished cells are skipped, so a
rerun continues), then writes one table: variant x sparsity, top-1 mean +- std over seeds.

  python benchmarks/prospr_ablation.py --config=configs/fashion_mnist_lenet300.py --seeds=3
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prospr_jax.sweep import table  # noqa: E402

VARIANTS = {  # name -> overrides of the config's prune settings (the config's own values are the baseline)
    'M=3 (baseline)': [],
    'M=0 (SNIP)': ['--config.prune.num_steps=0'],
    'M=1': ['--config.prune.num_steps=1'],
    'M=10': ['--config.prune.num_steps=10'],
    'inner momentum 0.9': ['--config.prune.inner_momentum=0.9'],
    'first-order': ['--config.prune.first_order=True'],
    'pruning batch 128': ['--config.prune.batch_size=128'],
    'pruning batch 512': ['--config.prune.batch_size=512'],
}
_CONFIG = flags.DEFINE_string('config', 'configs/fashion_mnist_lenet300.py', 'Config file.')
_SPARSITIES = flags.DEFINE_string('sparsities', '0.9,0.977482,0.993', 'Sparsities (sweep.py syntax).')
_SEEDS = flags.DEFINE_integer('seeds', 3, 'Seeds.')
_WORKDIR = flags.DEFINE_string('workdir', 'workdir/sweeps/prospr_ablation', 'One sweep folder per variant under it.')
_OUT = flags.DEFINE_string('out', 'results', 'Folder for prospr_ablation_<config>.{md,jsonl}.')
_AGGREGATE_ONLY = flags.DEFINE_bool('aggregate_only', False, 'Only build the table from finished cells.')


def folder(name: str) -> str:
  return ''.join(c if c.isalnum() else '_' for c in name).strip('_')


def main(argv):
  del argv
  root = pathlib.Path(_WORKDIR.value) / pathlib.Path(_CONFIG.value).stem
  for name, overrides in VARIANTS.items():
    if not _AGGREGATE_ONLY.value:
      subprocess.run([sys.executable, str(ROOT / 'sweep.py'), f'--config={_CONFIG.value}', *overrides,
                      '--criteria=prospr', f'--sparsities={_SPARSITIES.value}', f'--seeds={_SEEDS.value}',
                      f'--workdir={root / folder(name)}'], check=True)
  rows = []
  for name in VARIANTS:
    path = root / folder(name) / 'results.jsonl'
    if path.exists():
      rows += [dict(json.loads(line), variant=name) for line in path.read_text().splitlines()
               if json.loads(line)['criterion'] == 'prospr']
  # the sweep's statistics, a variant in place of a criterion: a collapsed or diverged seed counts at chance, and says so
  recorded = json.loads((root / folder(next(iter(VARIANTS))) / 'sweep.json').read_text()) if rows else None
  chance = table.chance_top1(recorded['base_config']) if recorded else 10.0
  summaries = table.summarize([dict(row, criterion=row['variant']) for row in rows], chance)
  sparsities = sorted({row['sparsity'] for row in rows})
  lines = ['| variant | ' + ' | '.join(f'{100 * s:.1f}%' for s in sparsities) + ' |',
           '|---|' + '---|' * len(sparsities)]
  for name in VARIANTS:
    lines.append(f'| {name} | ' + ' | '.join(table.format_summary(summaries.get((name, s))) for s in sparsities) + ' |')
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  stem = f'prospr_ablation_{pathlib.Path(_CONFIG.value).stem}'
  (out / f'{stem}.md').write_text('\n'.join(lines) + '\n')
  (out / f'{stem}.jsonl').write_text(''.join(json.dumps(row) + '\n' for row in rows))
  print('\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
