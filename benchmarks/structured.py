"""Structured pruning pays: train-step time and memory of the dense, masked and compact network, side by side.

For each model and channel sparsity: random channel pruning (the speed depends only
on the widths kept, not on which channels), then a train step (SGD momentum +
weight decay, ``prospr_jax.harness.train_steps.train_step``) of the dense network, of the
masked one (full width, the channel mask expanded to every parameter) and of the
compact one (``prospr_jax.compact``): the median of ``--repeats`` rounds that
time each of the three once in turn (so a shared machine's load changes hit all
three alike), XLA's peak memory for the compiled step, and the compact network's
forward FLOPs over the dense one's, counted from shapes (``models/flops.py``; XLA's
own count of the compiled step is kept as ``xla_flops``).

  nice -n 5 python benchmarks/structured.py --models=vgg19,resnet18 --sparsities=0.5,0.8,0.9,0.95 --batch_size=32
  python benchmarks/structured.py --flops_only=benchmarks/results/structured_cpu.json   # recount FLOPs, no timing
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import prospr_jax
from prospr_jax import masks as masks_lib
from prospr_jax.channels import groups, scores as channel_scores
from prospr_jax.harness import cost, train_steps
from prospr_jax.models import flops, get_model, init_variables, plans
from prospr_jax.xla_cpu import conv_impl

MODELS = {  # CIFAR-100 shapes: 32x32x3 images, 100 classes
    'vgg19': {},
    'resnet18': {'small_input': True},
}
_MODELS = flags.DEFINE_list('models', ['vgg19', 'resnet18'], f'Among {", ".join(MODELS)}.')
_SPARSITIES = flags.DEFINE_list('sparsities', ['0.5', '0.8', '0.9', '0.95'], 'Channel sparsities.')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Train-step batch size.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed rounds: each network once per round, after one warm-up call.')
_OUT = flags.DEFINE_string('out', 'benchmarks/results/structured_cpu.json', 'JSON results.')
_FLOPS_ONLY = flags.DEFINE_string('flops_only', None, 'A results JSON whose rows get their FLOPs counted from shapes '
                                  '(the compact widths it records), rewritten in place; nothing is timed.')
INPUT_SHAPE = (32, 32, 3)


_COMPILED = {}


def compiled_step(model, state, batch, optimizer):
  """The compiled train step of ``model`` for the shapes of ``state``: masked runs share the dense one's."""
  signature = (model, str(jax.tree.map(lambda x: (x.shape, str(x.dtype)), state)))
  if signature not in _COMPILED:
    step = jax.jit(functools.partial(train_steps.train_step, model=model, optimizer=optimizer))
    _COMPILED[signature] = step.lower(state, batch).compile()
  return _COMPILED[signature]


def prepare(model, variables, mask, batch):
  """``(compiled step, its state, static costs)``: XLA's FLOPs and peak memory, compile time, kept parameters."""
  optimizer = train_steps.make_optimizer(learning_rate=0.01, momentum=0.9, weight_decay=5e-4)
  state = train_steps.create_train_state(variables, mask, optimizer, jax.random.key(0))
  start = time.perf_counter()
  compiled = compiled_step(model, state, batch, optimizer)
  compile_seconds = time.perf_counter() - start
  jax.block_until_ready(compiled(state, batch))  # warm-up
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return compiled, state, {'peak_mib': compiled.memory_analysis().peak_memory_in_bytes / 2**20,
                           'xla_flops': float(analysis['flops']), 'compile_seconds': compile_seconds,
                           'flops': flops.forward_flops(model, variables, INPUT_SHAPE),
                           'parameters': cost.parameter_count(variables['params'], mask)}


def interleaved_seconds(networks: dict[str, tuple], batch) -> dict[str, float]:
  """Median step seconds of each network, timed in turn round after round (a shared machine's load hits all alike)."""
  times = {name: [] for name in networks}
  for _ in range(_REPEATS.value):
    for name, (compiled, state, _) in networks.items():
      start = time.perf_counter()
      jax.block_until_ready(compiled(state, batch))
      times[name].append(time.perf_counter() - start)
  return {name: float(np.median(t)) for name, t in times.items()}


def run_model(name: str, sparsities: list[float]) -> list[dict]:
  model = get_model(name, 100, conv_general_dilated=conv_impl.resolve_conv_impl('auto'), **MODELS[name])
  variables = init_variables(model, (32, 32, 3), jax.random.key(0))
  batch = {'image': jax.random.normal(jax.random.key(1), (_BATCH.value, 32, 32, 3)),
           'label': jnp.arange(_BATCH.value, dtype=jnp.int32) % 100}
  plan = plans.channel_plan(model, variables['params'])
  dense = prepare(model, variables, masks_lib.all_ones_mask(variables['params']), batch)
  scores = channel_scores.score_channels(prospr_jax.random_saliency, plan, variables['params'], None, rng=0)
  rows = []
  for sparsity in sparsities:
    mask = prospr_jax.global_topk_mask(scores, sparsity, keep_one_per_layer=True)
    narrow, small = prospr_jax.compact(model, variables, mask)
    networks = {'dense': dense, 'masked': prepare(model, variables, groups.expand(plan, mask, variables['params']),
                                                  batch),
                'compact': prepare(narrow, small, masks_lib.all_ones_mask(small['params']), batch)}
    seconds = interleaved_seconds(networks, batch)
    row = {'model': name, 'sparsity': sparsity, 'batch_size': _BATCH.value,
           'channels_kept': int(sum(int(np.sum(m)) for m in mask.values())),
           'channels': int(sum(np.size(m) for m in mask.values())),
           **{k: {'seconds': seconds[k], **networks[k][2]} for k in networks}, 'widths': plans.width_fields(narrow)}
    print(json.dumps({k: v for k, v in row.items() if k != 'widths'}), flush=True)
    rows.append(row)
  return rows


def table(rows: list[dict]) -> str:
  lines = [('| model | channel sparsity | channels kept | step s: dense | masked | compact | compact speed-up | '
            'peak MiB: dense | masked | compact | compact FLOPs / dense (from shapes) | compact params |'),
           '|---|---|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    d, m, c = r['dense'], r['masked'], r['compact']
    lines.append(f'| {r["model"]} | {r["sparsity"]:.0%} | {r["channels_kept"]} / {r["channels"]} | {d["seconds"]:.3f} | '
                 f'{m["seconds"]:.3f} | {c["seconds"]:.3f} | {d["seconds"] / c["seconds"]:.1f}x | {d["peak_mib"]:.0f} | '
                 f'{m["peak_mib"]:.0f} | {c["peak_mib"]:.0f} | {c["flops"] / d["flops"]:.3f} | {c["parameters"]:,} |')
  return '\n'.join(lines)


def recount_flops(path: pathlib.Path) -> list[dict]:
  """The rows of a results JSON with every network's forward FLOPs counted from shapes (``flops``)."""
  results = json.loads(path.read_text())
  for row in results['rows']:
    count = lambda **widths: flops.forward_flops(
        model := get_model(row['model'], 100, **MODELS[row['model']], **widths),
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *INPUT_SHAPE)), train=False)), INPUT_SHAPE)
    dense = count()
    widths = {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
              for k, v in row['widths'].items()}
    for network, value in (('dense', dense), ('masked', dense), ('compact', count(**widths))):
      row[network].setdefault('xla_flops', row[network].pop('flops', None))
      row[network]['flops'] = value
  path.write_text(json.dumps(results, indent=1))
  return results['rows']


def main(argv):
  del argv
  if _FLOPS_ONLY.value:
    print(table(recount_flops(pathlib.Path(_FLOPS_ONLY.value))))
    return
  rows = []
  start = time.perf_counter()
  for name in _MODELS.value:
    rows += run_model(name, [float(s) for s in _SPARSITIES.value])
  out = pathlib.Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({'device': jax.devices()[0].device_kind, 'jax': jax.__version__,
                             'load_average': list(os.getloadavg()),
                             'seconds': time.perf_counter() - start, 'rows': rows}, indent=1))
  print(table(rows))


if __name__ == '__main__':
  app.run(main)
