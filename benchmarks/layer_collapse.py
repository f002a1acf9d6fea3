"""Which layers does a criterion's global top-k empty, and which of ProsPr's settings make it do so?

For a config (the model, data, seed and pruning batches every cell of that config scores with) and a list of
scoring variants (config.prune overrides, or another criterion), it scores the initial network once per variant and
seed exactly as ``prune.py`` does (``harness.pruning.compute_scores``), then counts, at each sparsity, how many
weights the global top-k keeps in every layer, and which layers it empties (``harness/connectivity.py`` tells
whether a path from input to output is left).
It also reports each layer's share of the total score. Scores are cached per variant and seed in ``--workdir`` (a
rerun continues); rows go to ``--out``/rows.jsonl and a table to ``--out``/table.md.

``--authors_code=DIR`` (a checkout of mil-ad/prospr) also scores exact ProsPr with the authors' own ``prospr.prune``
on the torch twin (``torch_reference.py``) of the same initial weights and pruning batches, in float32 on the CPU as
their code runs it: whether their code empties the same layers.

  python benchmarks/layer_collapse.py --config=configs/fashion_mnist_resnet20.py --seeds=0,1,2 \
    --variants=exact,first_order,M1,snip,batch512,lr0.01 --out=results/layer_collapse
"""

from __future__ import annotations

import ast
import dataclasses
import json
import pathlib
import sys
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prospr_jax import data, masks as masks_lib, topk  # noqa: E402
from prospr_jax.harness import pruning, seeds, setup as setup_lib  # noqa: E402
from prospr_jax.harness.records import PruneSpec, Scoring  # noqa: E402

VARIANTS = {  # name -> config.prune overrides ('criterion' picks another criterion)
    'exact': {},
    'first_order': {'first_order': True},
    'M1': {'num_steps': 1},
    'snip': {'criterion': 'snip'},
    'batch512': {'batch_size': 512},
    'lr0.01': {'inner_lr': 0.01},
    'lr0.01_first_order': {'inner_lr': 0.01, 'first_order': True},
}

_CONFIG = config_flags.DEFINE_config_file('config', str(ROOT / 'configs/fashion_mnist_resnet20.py'), 'The config.')
_VARIANTS = flags.DEFINE_list('variants', ['exact', 'first_order', 'M1', 'snip'],
                              f'Scorings, from {", ".join(VARIANTS)}, or NAME:key=value;key=value (config.prune).')
_SEEDS = flags.DEFINE_list('seeds', ['0'], 'Seeds (initial weights and pruning batches, as in a cell).')
_SPARSITIES = flags.DEFINE_list('sparsities', ['0.9', '0.965', '0.982', '0.993'], 'Sparsities to count at.')
_WORKDIR = flags.DEFINE_string('workdir', '/tmp/layer_collapse', 'Cached scores (scores_<variant>_seed<k>.npz).')
_OUT = flags.DEFINE_string('out', '', 'Where rows.jsonl and table.md go ("": print only).')
_AUTHORS_CODE = flags.DEFINE_string('authors_code', '', 'A checkout of mil-ad/prospr: also score with its prune().')


def parse_variant(text: str) -> tuple[str, dict]:
  """``exact`` (a name above) or ``NAME:key=value;key=value`` -> (name, overrides)."""
  name, _, spec = text.partition(':')
  if not spec:
    if name not in VARIANTS:
      raise app.UsageError(f'unknown variant {name!r}; valid: {", ".join(VARIANTS)} or NAME:key=value;key=value')
    return name, VARIANTS[name]
  pairs = (item.partition('=') for item in spec.split(';'))
  return name, {key: ast.literal_eval(value) for key, _, value in pairs}


def score(config, setup: setup_lib.Setup, overrides: dict) -> dict[str, np.ndarray]:
  """``{layer name: scores}`` of the initial network under ``config`` changed by ``overrides``."""
  overrides = dict(overrides)
  scoring = Scoring.of(config)
  if 'criterion' in overrides:
    scoring = dataclasses.replace(scoring, criterion=overrides.pop('criterion'))
  scoring = scoring.with_settings(**overrides)
  scores = pruning.compute_scores(scoring, PruneSpec.of(config), setup.model, setup.variables, setup.info,
                                  setup.train_source, setup.mesh)
  return {name: np.asarray(leaf, np.float64) for name, leaf in masks_lib.named_leaves(scores)}


def kept_per_layer(scores: dict[str, np.ndarray], sparsity: float) -> dict[str, int]:
  """How many weights of each layer the global top-k keeps (``topk.num_to_keep`` of them, largest first)."""
  names = list(scores)
  flat = np.concatenate([scores[n].ravel() for n in names])
  keep = topk.num_to_keep(flat.size, sparsity)
  order = np.argsort(-flat, kind='stable')[:keep]
  owner = np.repeat(np.arange(len(names)), [scores[n].size for n in names])
  counts = np.bincount(owner[order], minlength=len(names))
  return dict(zip(names, counts.tolist()))


def authors_scores(config, setup: setup_lib.Setup, seed: int, checkout: str) -> dict[str, np.ndarray]:
  """Exact ProsPr scores from mil-ad/prospr's ``prune(return_scores=True)`` on the torch twin, same weights/batches."""
  import torch
  import torch_reference as twin

  sys.path.insert(0, checkout)
  import prospr as authors  # mil-ad/prospr's package

  channels = setup.info.input_shape[-1]
  model = twin.load_flax_variables(twin.build(config.model, setup.info.num_classes, channels), setup.variables)
  settings = config.prune
  loader = data.train_loader(setup.info, setup.train_source, global_batch_size=settings.batch_size,
                             seed=seeds.prune_data(seed), worker_count=0)
  batches = []
  for batch, _ in zip(loader, range(settings.num_steps + 1)):
    batches.append((torch.tensor(np.asarray(batch['image']).transpose(0, 3, 1, 2)),
                    torch.tensor(np.asarray(batch['label']), dtype=torch.long)))
  filter_fn = lambda module: isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))  # every conv and linear
  scores = authors.prune(model, settings.sparsity, batches, filter_fn, settings.num_steps, settings.inner_lr,
                         settings.inner_momentum, method='full', new_data_in_inner=True, return_scores=True)
  names = [name for name, module in model.named_modules() if filter_fn(module)]
  return dict(twin.to_flax_layout(model, f'{name}.weight', s) for name, s in zip(names, scores))


def rows_for(variant: str, seed: int, scores: dict[str, np.ndarray], sparsities: list[float]) -> list[dict]:
  total = sum(s.sum() for s in scores.values())
  share = {name: float(s.sum() / total) for name, s in scores.items()}
  rows = []
  for sparsity in sparsities:
    kept = kept_per_layer(scores, sparsity)
    emptied = [name for name, count in kept.items() if count == 0]
    rows.append(dict(variant=variant, seed=seed, sparsity=sparsity, emptied=emptied, kept=kept,
                     sizes={n: int(s.size) for n, s in scores.items()}, score_share=share))
  return rows


def table(rows: list[dict], sparsities: list[float]) -> str:
  """Emptied layers per variant and sparsity (count per seed), then per-layer kept fractions at the highest."""
  variants = list(dict.fromkeys(r['variant'] for r in rows))
  lines = ['| emptied layers (per seed) | ' + ' | '.join(f'{100 * s:g}%' for s in sparsities) + ' |',
           '|---' * (len(sparsities) + 1) + '|']
  for v in variants:
    cells = []
    for s in sparsities:
      counts = [len(r['emptied']) for r in rows if r['variant'] == v and r['sparsity'] == s]
      cells.append(', '.join(map(str, counts)))
    lines.append(f'| {v} | ' + ' | '.join(cells) + ' |')
  for s in sparsities[-2:]:
    first = [r for r in rows if r['sparsity'] == s]
    if not first:
      continue
    layers = list(first[0]['kept'])
    lines += ['', f'Kept weights per layer at {100 * s:g}% (seed {first[0]["seed"]}; score share in brackets, '
              f'{variants[0]}):', '',
              '| layer | size | ' + ' | '.join(variants) + ' |', '|---' * (len(variants) + 2) + '|']
    for layer in layers:
      row = next(r for r in first if r['variant'] == variants[0])
      cells = [str(next((r['kept'][layer] for r in first if r['variant'] == v and r['seed'] == row['seed']), '-'))
               for v in variants]
      lines.append(f'| {layer} | {row["sizes"][layer]:,} ({100 * row["score_share"][layer]:.2f}%) | '
                   + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main(argv) -> None:
  del argv
  config = _CONFIG.value
  variants = [parse_variant(v) for v in _VARIANTS.value]
  if _AUTHORS_CODE.value:
    variants.append(('authors_exact', None))
  sparsities = [float(s) for s in _SPARSITIES.value]
  workdir = pathlib.Path(_WORKDIR.value)
  workdir.mkdir(parents=True, exist_ok=True)
  rows = []
  for seed in map(int, _SEEDS.value):
    config.seed = seed
    setup = setup_lib.make_setup(config)
    for name, overrides in variants:
      cached = workdir / f'{config.model}_{config.dataset}_{name}_seed{seed}.npz'
      if cached.exists():
        scores = dict(np.load(cached))
      else:
        start = time.perf_counter()
        scores = authors_scores(config, setup, seed, _AUTHORS_CODE.value) if overrides is None \
            else score(config, setup, overrides)
        np.savez(cached, **scores)
        print(f'{name} seed {seed}: scored in {time.perf_counter() - start:.0f} s', flush=True)
      rows += rows_for(name, seed, scores, sparsities)
      for r in rows[-len(sparsities):]:
        print(f'  {name} seed {seed} at {100 * r["sparsity"]:g}%: {len(r["emptied"])} emptied '
              f'{" ".join(r["emptied"])}', flush=True)
  text = table(rows, sparsities)
  print(text)
  if _OUT.value:
    out = pathlib.Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'rows.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    (out / 'table.md').write_text(text + '\n')


if __name__ == '__main__':
  app.run(main)
