"""Does the rounding that moves exact ProsPr's M = 3 masks move their accuracy? (docs/numerics.md)

ResNet-20 at half width on Fashion-MNIST (``configs/fashion_mnist_resnet20_half.py:4``, 4 epochs, the same recipe for
every cell), exact ProsPr (M = 3) and SNIP (the control, whose masks barely move) at 90% and 98.2%, 3 seeds, with
masks scored three ways: (a) float64, (b) float32 with plain ``lax`` convolutions (what a GPU computes), (c) float32
with ``auto`` (this CPU's default: Winograd F(2x2, 3x3) in the wide layers). Training is the same in every cell
(``conv_impl=auto``, float32); only the mask differs. SNIP runs under (a) and (c), dense under (c).

One sweep workdir per scoring (``<workdir>/<variant>``), each cell in its own process through ``sweep.py
--only_cell``: ProsPr's cells seed by seed first, then the controls', so a partial run answers the main question
first and is balanced within each criterion; rerunning continues (finished cells are skipped). The
report: top-1 mean ± std per scoring, the kept-weight overlap of the masks between scorings (mean over seeds, and
its smallest layer), and per-layer density, written to ``--out`` (rows.jsonl, table.md).

  nice -n 10 python benchmarks/precision_study.py --workdir results/precision_study/work --out results/precision_study
  python benchmarks/precision_study.py --workdir results/precision_study/work --out results/precision_study --report_only
"""

from __future__ import annotations

import itertools
import json
import pathlib
import statistics
import subprocess
import sys

import numpy as np
from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from prospr_jax import mask_files  # noqa: E402
from prospr_jax.sweep import table  # noqa: E402
from prospr_jax.sweep.grid import Cell  # noqa: E402

CONFIG = 'configs/fashion_mnist_resnet20_half.py:4'
CHANCE = 10.0  # Fashion-MNIST's 10 classes: a network that outputs a constant
SPARSITIES = (0.9, 0.981986)
VARIANTS = {  # scoring -> (config overrides, criteria scored that way)
    'float64': (['--config.prune.precision=float64'], ('prospr', 'snip')),
    'float32_lax': (['--config.prune.conv_impl=lax'], ('prospr',)),
    'float32_auto': ([], ('prospr', 'snip', 'dense')),
}
PAIRS = (('float64', 'float32_lax'), ('float64', 'float32_auto'), ('float32_lax', 'float32_auto'))

_WORKDIR = flags.DEFINE_string('workdir', 'results/precision_study/work', 'One sweep workdir per scoring below it '
                               '(kept in git without checkpoints: a later run continues from its finished cells).')
_OUT = flags.DEFINE_string('out', 'results/precision_study', 'Where rows.jsonl and table.md go.')
_SEEDS = flags.DEFINE_integer('seeds', 3, 'Seeds 0 .. seeds - 1.')
_REPORT_ONLY = flags.DEFINE_bool('report_only', False, 'Only aggregate what finished.')


def sweep_args(variant: str) -> list[str]:
  criteria = ','.join(c for c in VARIANTS[variant][1] if c != 'dense')
  return ['sweep.py', f'--config={CONFIG}', f'--criteria={criteria}',
          f'--sparsities={",".join(map(str, SPARSITIES))}', f'--seeds={_SEEDS.value}',
          f'--workdir={pathlib.Path(_WORKDIR.value) / variant}', *VARIANTS[variant][0]]


def cells(seeds: int) -> list[tuple[str, str, float, int]]:
  """``(variant, criterion, sparsity, seed)``: ProsPr under every scoring seed by seed, then SNIP's controls seed by
  seed, then dense, so a partial run answers the main question first and is balanced within each criterion."""
  prospr = [(v, 'prospr', s, seed) for seed in range(seeds) for s in SPARSITIES for v in VARIANTS]
  snip = [(v, 'snip', s, seed) for seed in range(seeds) for v, (_, criteria) in VARIANTS.items() if 'snip' in criteria
          for s in SPARSITIES]
  return prospr + snip + [('float32_auto', 'dense', 0.0, seed) for seed in range(seeds)]


def run_cells() -> None:
  for variant in VARIANTS:  # records each sweep (its sweep.json) without running anything
    subprocess.run([sys.executable, *sweep_args(variant), '--print_commands'], cwd=ROOT, check=True,
                   capture_output=True)
  for variant, criterion, sparsity, seed in cells(_SEEDS.value):
    print(f'== {variant} {criterion} {sparsity} seed {seed}', flush=True)
    subprocess.run([sys.executable, *sweep_args(variant), f'--only_cell={criterion},{sparsity},{seed}'],
                   cwd=ROOT, check=True)


def cell_dir(variant: str, criterion: str, sparsity: float, seed: int) -> pathlib.Path:
  return Cell(criterion, sparsity, seed).directory(pathlib.Path(_WORKDIR.value) / variant)


def finished(variant: str, criterion: str, sparsity: float, seed: int) -> dict | None:
  path = ROOT / cell_dir(variant, criterion, sparsity, seed) / 'results.json'
  if not path.exists():
    return None
  results = json.loads(path.read_text())
  final = results.get('dense' if criterion == 'dense' else 'pruned') or {}
  return {'variant': variant, 'criterion': criterion, 'sparsity': sparsity, 'seed': seed,
          'top1': final.get('eval_top1'), 'collapsed': results.get('collapsed'), 'diverged': results.get('diverged'),
          'weight_sparsity': results.get('weight_sparsity')}


def mask_of(variant: str, criterion: str, sparsity: float, seed: int) -> dict[str, np.ndarray] | None:
  path = ROOT / cell_dir(variant, criterion, sparsity, seed) / 'mask.npz'
  return mask_files.read_npz(path) if path.exists() else None


def overlaps(criterion: str, sparsity: float, seed: int) -> dict[str, dict[str, float]]:
  out = {}
  for a, b in PAIRS:
    ma, mb = mask_of(a, criterion, sparsity, seed), mask_of(b, criterion, sparsity, seed)
    if ma is None or mb is None:
      continue
    layers = {name: float(np.sum(ma[name] & mb[name]) / np.sum(ma[name])) for name in ma  # not a layer it empties
              if np.any(ma[name])}
    total = float(sum(np.sum(ma[n] & mb[n]) for n in ma) / sum(np.sum(ma[n]) for n in ma))
    out[f'{a} / {b}'] = {'total': total, 'smallest_layer': min(layers.values()),
                         'smallest_layer_name': min(layers, key=layers.get)}
  return out


def densities(variant: str, criterion: str, sparsity: float, seed: int) -> dict[str, float] | None:
  mask = mask_of(variant, criterion, sparsity, seed)
  return None if mask is None else {name: float(np.mean(m)) for name, m in mask.items()}


def mean_std(rows: list[dict]) -> str:
  """The sweep's ``mean ± std (n=3)`` of the rows' top-1, a collapsed or diverged seed at chance and said so."""
  summary = table.summarize([dict(r, criterion='-', sparsity=0.0) for r in rows], CHANCE).get(('-', 0.0))
  return table.format_summary(summary)


def density_table(rows: list[dict], sparsity: float) -> list[str]:
  """Per layer, the fraction of its weights each scoring's mask keeps at ``sparsity`` (mean over seeds)."""
  columns = [(v, c) for c in ('prospr', 'snip') for v, (_, criteria) in VARIANTS.items() if c in criteria]
  found = {col: [r['layer_density'] for r in rows if (r['variant'], r['criterion']) == col and
                 r['sparsity'] == sparsity and r.get('layer_density')] for col in columns}
  columns = [col for col in columns if found[col]]
  if not columns:
    return []
  layers = sorted(found[columns[0]][0], key=lambda name: name.startswith('Dense'))  # the classifier last
  lines = [f'Per-layer density at {100 * sparsity:.0f}% sparsity (kept fraction of each layer\'s weights, mean over '
           'seeds):', '', '| layer | ' + ' | '.join(f'{c} {v}' for v, c in columns) + ' |',
           '|---|' + '---|' * len(columns)]
  for layer in layers:
    lines.append(f'| {layer} | ' + ' | '.join(f'{100 * statistics.fmean(d[layer] for d in found[col]):.1f}%'
                                              for col in columns) + ' |')
  return lines


def report() -> None:
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  rows = []
  for seed, (variant, criterion, sparsity) in itertools.product(range(_SEEDS.value), [
      (v, c, s) for v, (_, criteria) in VARIANTS.items() for c in criteria for s in (SPARSITIES if c != 'dense'
                                                                                        else (0.0,))]):
    row = finished(variant, criterion, sparsity, seed)
    if row is not None:
      if criterion != 'dense':
        row['overlap'] = overlaps(criterion, sparsity, seed) if variant == 'float64' else None
        row['layer_density'] = densities(variant, criterion, sparsity, seed)
      rows.append(row)
  (out / 'rows.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  lines = ['Top-1 (%) after 4 epochs, mean ± std over seeds (a collapsed seed counts at chance, 10%), by how the mask '
           'was scored; overlap: the fraction of the kept weights two scorings share (mean over seeds; its smallest '
           'layer in brackets).', '',
           '| criterion | sparsity | (a) float64 | (b) float32 lax | (c) float32 auto | overlap a/b | overlap a/c | '
           'overlap b/c |', '|---|---|---|---|---|---|---|---|']
  for criterion, sparsity in [(c, s) for c in ('prospr', 'snip') for s in SPARSITIES]:
    cells_ = [mean_std([r for r in rows if (r['variant'], r['criterion'], r['sparsity']) == (v, criterion, sparsity)])
              for v in VARIANTS]
    pairs = []
    for pair in (f'{a} / {b}' for a, b in PAIRS):
      found = [o[pair] for s in range(_SEEDS.value) if (o := overlaps(criterion, sparsity, s)) and pair in o]
      pairs.append('—' if not found else f'{100 * statistics.fmean(f["total"] for f in found):.1f}% '
                   f'({100 * min(f["smallest_layer"] for f in found):.0f}%)')
    lines.append(f'| {criterion} | {100 * sparsity:.1f}% | ' + ' | '.join(cells_) + ' | ' + ' | '.join(pairs) + ' |')
  dense = [r for r in rows if r['criterion'] == 'dense']
  lines += ['', f'Dense: {mean_std(dense)}.', '', *density_table(rows, SPARSITIES[0])]
  (out / 'table.md').write_text('\n'.join(lines) + '\n')
  print('\n'.join(lines))


def main(argv):
  del argv
  if not _REPORT_ONLY.value:
    run_cells()
  report()


if __name__ == '__main__':
  app.run(main)
