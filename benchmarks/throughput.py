"""Where a cell's time goes: images/s of the input pipeline alone, the train step alone, and the two together.

On any backend, for one config: the input pipeline (the host loader and the copy to the device), the jitted train
step on one device-resident batch, and the training loop's pairing of the two; with ``--resident=K,...`` also
the whole set held on the device (``config.data_on_device``), K steps per dispatch; then one cell's other costs:
process start (a fresh interpreter importing the harness), compiling the train and eval steps, one evaluation of
the eval set, one checkpoint save. Each rate is the median of ``--repeats`` timed windows after a warm-up.

  python benchmarks/throughput.py --config=configs/fashion_mnist_lenet5.py
  python benchmarks/throughput.py --config=configs/default.py --resident=1,8,22
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/ is importable, as for prune.py

import jax
import numpy as np
from absl import app, flags

from prospr_jax import data
from prospr_jax.data import resident
from prospr_jax.harness import dispatch, flag_parsing, seeds, setup as setup_lib, train_loop, validation
from prospr_jax.harness.records import Recipe, Running
from prospr_jax.runtime import checkpointing, sharding

_CONFIG = flag_parsing.define_config_flag('configs/fashion_mnist_lenet5.py', 'The config of the cell to measure.')
_SECONDS = flags.DEFINE_float('seconds', 5.0, 'Seconds per timed window.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed windows per measurement (the median is printed).')
_RESIDENT = flags.DEFINE_list('resident', ['1', '8'], 'Steps per dispatch to time on the device-resident set '
                              '(empty: none; each at most the steps of an epoch).')


def _rate(run_steps, batch_size: int) -> float:
  """Median images/s of ``run_steps(n)`` (which blocks, and returns the steps it ran: at least ``n``, or None for
  ``n``) over the timed windows, ``n`` sized to the window."""
  run = lambda n: run_steps(n) or n
  run(2)  # warm-up (compiles)
  start = time.perf_counter()
  ran = run(5)
  per_step = (time.perf_counter() - start) / ran
  n = max(5, int(_SECONDS.value / max(per_step, 1e-6)))
  rates = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    ran = run(n)
    rates.append(ran * batch_size / (time.perf_counter() - start))
  return float(np.median(rates))


def _seconds(fn) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def main(argv):
  del argv
  config = _CONFIG.value
  validation.validate_config(config)
  setup = setup_lib.make_setup(config)
  recipe, running = Recipe.of(config), Running.of(config)
  mask = jax.tree.map(lambda _: None, setup.variables['params'])
  steps_per_epoch, (_, _, train_step, eval_step) = train_loop.recipe_steps(recipe, setup)
  if bad := [k for k in map(int, _RESIDENT.value) if not 1 <= k <= steps_per_epoch]:
    raise app.UsageError(f'--resident={",".join(map(str, bad))}: steps per dispatch are 1 to {steps_per_epoch} (an '
                         'epoch)')
  state = train_loop.initial_state(recipe, running.seed, setup, mask)
  batch_size = recipe.batch_size
  loader = iter(data.train_loader(setup.info, setup.train_source, global_batch_size=batch_size,
                                  seed=seeds.train_data(running.seed), worker_count=running.worker_count))
  print(f'# {config.model} on {config.dataset}, batch {batch_size}, {steps_per_epoch} steps/epoch, '
        f'{jax.default_backend()} ({jax.devices()[0].device_kind}), jax {jax.__version__}, '
        f'{time.strftime("%Y-%m-%d")}', flush=True)

  compile_train = _seconds(lambda: train_step.lower(state, sharding.global_batch(next(loader), setup.mesh)).compile())
  on_device = sharding.global_batch(next(loader), setup.mesh)

  def input_only(n):
    for _ in range(n):
      jax.block_until_ready(sharding.global_batch(next(loader), setup.mesh))

  def step_only(n):
    nonlocal state
    for _ in range(n):
      state, metrics = train_step(state, on_device)
    jax.block_until_ready(metrics)

  def together(n):
    nonlocal state
    for _ in range(n):
      state, metrics = train_step(state, sharding.global_batch(next(loader), setup.mesh))
    jax.block_until_ready(metrics)

  print(f'{"what":<36} {"images/s":>10} {"s/epoch":>8}', flush=True)

  def report(name, rate):  # each row as soon as it is measured: a run cut short keeps what it measured
    print(f'{name:<36} {rate:>10.0f} {steps_per_epoch * batch_size / rate:>8.2f}', flush=True)

  for name, fn in (('input pipeline alone', input_only), ('train step alone', step_only),
                   ('input + train step', together)):
    report(name, _rate(fn, batch_size))
  if _RESIDENT.value:
    _, optimizer, _, _ = train_loop.recipe_steps(recipe, setup)[1]
    spec = resident.layout(setup.info, setup.train_source, batch_size, steps_per_epoch, train=True)
    eval_spec = resident.layout(setup.info, setup.eval_source, recipe.eval_batch_size, 0, train=False)
    epoch_order, chunk, resident_eval = dispatch.compiled_resident(setup.model, optimizer, spec, eval_spec,
                                                                   setup.mesh)
    arrays, key = resident.put(setup.train_source, setup.mesh), sharding.replicate(seeds.device_data(0), setup.mesh)
    order = epoch_order(key, np.int32(0))
    for k in map(int, _RESIDENT.value):
      def chunks(n, k=k):
        nonlocal state
        for i in range(-(-n // k)):
          state, metrics = chunk(state, arrays, order, key, np.int32(i * k % (steps_per_epoch - k + 1)), length=k)
        jax.block_until_ready(metrics)
        return -(-n // k) * k
      report(f'device-resident, {k} steps/dispatch', _rate(chunks, batch_size))

  eval_batch = next(data.eval_batches(setup.info, setup.eval_source, global_batch_size=recipe.eval_batch_size))
  compile_eval = _seconds(lambda: eval_step.lower(state, sharding.global_batch(eval_batch, setup.mesh)).compile())
  dispatch.evaluate(state, setup, eval_step, recipe.eval_batch_size)  # warm-up
  evaluation = min(_seconds(lambda: dispatch.evaluate(state, setup, eval_step, recipe.eval_batch_size))
                   for _ in range(_REPEATS.value))
  others = [('process start (imports)', 0.0), ('compile train step', compile_train),
            ('compile eval step', compile_eval),
            (f'evaluate {len(setup.eval_source)} images', evaluation)]
  if _RESIDENT.value:
    eval_arrays = resident.put(setup.eval_source, setup.mesh)
    others.append(('compile + evaluate on the device', _seconds(lambda: resident_eval(state, eval_arrays))))
    others.append(('evaluate on the device', min(_seconds(lambda: resident_eval(state, eval_arrays))
                                                 for _ in range(_REPEATS.value))))
  initial = sharding.replicate(setup.variables['params'], setup.mesh)
  with tempfile.TemporaryDirectory() as folder:
    checkpointer = checkpointing.Checkpointer(pathlib.Path(folder) / 'checkpoints')
    saves = []
    for step in range(1, _REPEATS.value + 2):
      start = time.perf_counter()
      checkpointer.save(step, state, initial, {'epoch': step})
      checkpointer.wait()
      saves.append(time.perf_counter() - start)
    checkpointer.close()
  start = time.perf_counter()
  subprocess.run([sys.executable, '-c', 'import prospr_jax.harness.experiment, jax; jax.devices()'], check=True)
  others[0] = ('process start (imports)', time.perf_counter() - start)
  print(f'\n{"other costs of a cell":<36} {"seconds":>10}')
  for name, seconds in [*others, ('checkpoint save (median)', float(np.median(saves[1:])))]:
    print(f'{name:<36} {seconds:>10.3f}')


if __name__ == '__main__':
  app.run(main)
