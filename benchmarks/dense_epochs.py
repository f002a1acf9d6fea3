"""How many epochs the dense network needs: final top-1 against the training length, one recipe, several seeds.

Each length is a full run of the recipe (its lr steps at 1/2 and 3/4 of training), so the table says which
length a sweep should use: the shortest whose dense accuracy is within noise of the longest.

  python benchmarks/dense_epochs.py --config=configs/fashion_mnist_lenet300.py --epochs=5,10,20,40 --seeds=2
"""

from __future__ import annotations

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/ is importable, as for prune.py

import numpy as np
from absl import app, flags

from prospr_jax import files
from prospr_jax.harness import entry, experiment, flag_parsing
from prospr_jax.harness.plots import pyplot

_CONFIG = flag_parsing.define_config_flag('configs/fashion_mnist_lenet300.py', 'A Fashion-MNIST config file.')
_EPOCHS = flags.DEFINE_list('epochs', ['5', '10', '20', '40'], 'Training lengths to compare.')
_SEEDS = flags.DEFINE_integer('seeds', 2, 'Seeds per length (0 .. seeds - 1).')
_RUNS = flags.DEFINE_string('runs', 'workdir/dense_epochs', 'Folder for the runs (checkpoints; not committed).')
_OUT = flags.DEFINE_string('out', 'benchmarks/results', 'Folder for dense_epochs_<config>.{jsonl,md,png}.')


def main(argv):
  del argv
  entry.configure_logging()
  from configs import fashion_mnist_recipe
  name = pathlib.Path(flags.FLAGS['config'].config_filename.split(':')[0]).stem
  runs, out = pathlib.Path(_RUNS.value) / name, pathlib.Path(_OUT.value)
  rows = []
  for epochs in map(int, _EPOCHS.value):
    for seed in range(_SEEDS.value):
      config = _CONFIG.value.copy_and_resolve_references()
      with config.unlocked():
        config.num_epochs, config.lr_milestones, config.seed = epochs, fashion_mnist_recipe.milestones(epochs), seed
        config.mask_path = ''
      result = experiment.train_and_evaluate(config, runs / f'epochs_{epochs}' / f'seed_{seed}')
      rows.append({'epochs': epochs, 'seed': seed, 'eval_top1': result['eval_top1']})
  files.write_text(out / f'dense_epochs_{name}.jsonl', ''.join(json.dumps(row) + '\n' for row in rows))
  lengths = sorted({row['epochs'] for row in rows})
  stats = [(e, np.mean(a := [r['eval_top1'] for r in rows if r['epochs'] == e]), np.std(a, ddof=1) if len(a) > 1
            else 0.0, len(a)) for e in lengths]
  table = ['| epochs | dense top-1 (mean +- std) | seeds |', '|---|---|---|']
  table += [f'| {e} | {100 * m:.2f} +- {100 * s:.2f} | {n} |' for e, m, s, n in stats]
  files.write_text(out / f'dense_epochs_{name}.md', '\n'.join(table) + '\n')
  print('\n'.join(table))
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.errorbar([e for e, *_ in stats], [100 * m for _, m, *_ in stats], [100 * s for _, _, s, _ in stats],
              marker='o', capsize=3)
  ax.set_xscale('log', base=2)
  ax.set_xlabel('training epochs (lr x0.1 at 1/2 and 3/4)')
  ax.set_ylabel('dense top-1 (%)')
  ax.set_title(f'{config.model} on {config.dataset}, {_SEEDS.value} seeds')
  fig.tight_layout()
  fig.savefig(out / f'dense_epochs_{name}.png', dpi=120)


if __name__ == '__main__':
  app.run(main, flags_parser=flag_parsing.parse_flags)
