"""Saliency cost against a train step: wall time, compile time and peak memory, side by side.

For each model, batch size and M it measures, each in a fresh process so peak
memory is its own: one training step (value_and_grad + SGD momentum), exact
ProsPr and first-order ProsPr (scan over M + 1 batches), and streamed
first-order ProsPr. Wall time is the median of repeats after one warm-up call;
compile time is lower + compile of the jitted function. Prints a table with
ratios to the train step and writes JSON. Not part of the test suite.

``--reference=torch`` also measures the PyTorch reference (``benchmarks/torch_reference.py``, the authors'
unrolled meta-gradient; needs the ``bench`` extra) for train_step, exact and first_order, each in its own process;
its rows read ``torch`` in the conv column, and every prospr_jax row gets its time and peak RSS over torch's.

  python benchmarks/saliency.py --models=small_cnn,resnet20,vgg16 --batch_sizes=16 --steps=3
  python benchmarks/saliency.py --models=resnet20,vgg16 --batch_sizes=256 --steps=3 --reference=torch
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

import rss
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list('models', ['small_cnn', 'resnet20', 'vgg16'], 'Models from prospr_jax.models (CIFAR shapes).')
flags.DEFINE_list('batch_sizes', ['16'], 'Batch sizes.')
flags.DEFINE_list('steps', ['3'], 'M, the number of inner steps.')
flags.DEFINE_list('modes', ['train_step', 'exact', 'first_order', 'streamed'], 'What to measure; exact_stored: '
                  'exact without recomputing the inner steps (checkpoint_steps=False), as the PyTorch reference.')
flags.DEFINE_list('conv_impls', ['lax', 'auto'], 'Convolution implementations (prospr_jax/xla_cpu/conv_impl.py), side by side; '
                  'name:MiB caps the im2col columns or Winograd tiles held at once (lean im2col, lean Winograd).')
flags.DEFINE_integer('image_size', 32, 'Input height and width (224 for ImageNet models).')
flags.DEFINE_integer('num_classes', 10, 'Output classes (1000 for ImageNet).')
flags.DEFINE_integer('repeats', 3, 'Timed calls after the warm-up call; the median is reported (0: the first '
                     'call after compiling, for baselines too slow to repeat).')
flags.DEFINE_integer('timeout', 1800, 'Seconds one configuration may take before it is reported as timed out.')
flags.DEFINE_enum('reference', None, ['torch'], 'Also measure this reference (benchmarks/torch_reference.py) '
                  'for the train_step, exact and first_order modes.')
flags.DEFINE_bool('release_heap', True, 'Hand the compiler\'s freed heap back to the OS after each compile, as '
                  'prune.py, train.py and sweep.py do (prospr_jax/xla_cpu/host_memory.py); --norelease_heap measures without.')
flags.DEFINE_string('out', 'benchmarks/results/saliency.json', 'Where the JSON goes.')
flags.DEFINE_list('table_from', [], 'Only print one table from these JSON result files.')
flags.DEFINE_string('worker', None, 'Internal: run one configuration, given as JSON, and print its result.')



def _device_peak_bytes(jax) -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


def _time_calls(fn, args, repeats, block):
  """Median of ``repeats`` calls after a warm-up call; with ``repeats=0`` the first call itself (slow baselines)."""
  start = time.perf_counter()
  block(fn(*args))  # warm-up
  if repeats == 0:
    return time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    block(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def run_worker(config: dict) -> dict:
  """Measure one (model, batch_size, steps, mode) in this process."""
  if config['conv_impl'] == 'torch':  # the reference: no jax in this process, so its peak RSS is torch's own
    import torch_reference
    return torch_reference.run_worker(config)
  import jax
  import jax.numpy as jnp
  import optax

  import prospr_jax
  from prospr_jax.models import get_model, init_variables
  from prospr_jax.xla_cpu import host_memory
  from prospr_jax.xla_cpu.conv_impl import resolve_conv_impl

  if config.get('release_heap', False):
    host_memory.release_heap_after_compiles()
  classes, size = config.get('num_classes', 10), config.get('image_size', 32)
  model = get_model(config['model'], classes, conv_general_dilated=resolve_conv_impl(config['conv_impl']))
  m, batch_size = config['steps'], config['batch_size']
  key_x, key_y, key_init = jax.random.split(jax.random.key(0), 3)
  variables = init_variables(model, (size, size, 3), key_init)  # jitted, as the library inits
  params = variables['params']
  loss_fn = prospr_jax.flax_loss_fn(model, variables)
  rss_before = rss.peak_rss_bytes()
  mode = config['mode']
  block = jax.block_until_ready

  if mode == 'streamed':
    # A stream as a data loader gives it: each batch made when asked for, so the data held never grow with M.
    def stream():
      for k in range(m + 1):
        kx, ky = jax.random.split(jax.random.fold_in(key_x, k))
        yield (jax.random.normal(kx, (batch_size, size, size, 3), jnp.float32),
               jax.random.randint(ky, (batch_size,), 0, classes))
    run = lambda: prospr_jax.prospr_saliency_streamed(params, stream(), loss_fn=loss_fn, num_steps=m)
    start = time.perf_counter()
    block(run())  # the first call compiles the step and the final gradient
    first_call = time.perf_counter() - start
    compile_peak = rss.peak_rss_bytes()
    rss.reset_peak()  # from here on the high-water mark is the runs' own
    seconds = _time_calls(lambda: run(), (), config['repeats'], block)
    compile_seconds = first_call - seconds
  else:
    x = jax.random.normal(key_x, (m + 1, batch_size, size, size, 3), jnp.float32)
    y = jax.random.randint(key_y, (m + 1, batch_size), 0, classes)
    if mode == 'train_step':
      optimizer = optax.sgd(0.1, momentum=0.9)

      def fn(params, opt_state, batch):
        grads = jax.grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

      args = (params, optimizer.init(params), (x[0], y[0]))
    else:
      def fn(params, batches):
        return prospr_jax.prospr_saliency(params, batches, loss_fn=loss_fn, first_order=mode == 'first_order',
                                          checkpoint_steps=mode != 'exact_stored')
      args = (params, (x, y))
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_seconds = time.perf_counter() - start
    compile_peak = rss.peak_rss_bytes()
    rss.reset_peak()  # from here on the high-water mark is the runs' own
    seconds = _time_calls(compiled, args, config['repeats'], block)

  run_peak = rss.peak_since_reset_bytes()
  return dict(config, seconds=seconds, compile_seconds=compile_seconds,
              peak_rss_bytes=max(compile_peak, run_peak or 0), run_peak_rss_bytes=run_peak,
              rss_before_bytes=rss_before, device_peak_bytes=_device_peak_bytes(jax),
              device=str(jax.devices()[0].device_kind), jax_version=jax.__version__)


def run_in_subprocess(config: dict) -> dict:
  command = [sys.executable, __file__, f'--worker={json.dumps(config)}']
  try:
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=FLAGS.timeout)
  except subprocess.TimeoutExpired:
    return dict(config, error=f'timed out after {FLAGS.timeout} s')
  lines = [line for line in done.stdout.splitlines() if line.startswith('{')]
  if done.returncode != 0 or not lines:
    return dict(config, error=done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'no output')
  return json.loads(lines[-1])


def _gib(nbytes: int | None) -> str:
  return '-' if nbytes is None else f'{nbytes / 2**30:.2f}'


def _torch_key(key: tuple) -> tuple:
  """The reference row a prospr_jax row is compared with: the reference's exact stores its steps anyway."""
  return key[:3] + ('exact',) if key[3] == 'exact_stored' else key


def format_table(results: list[dict]) -> str:
  """One row per measurement; ``x step`` is the ratio to the train step with the same conv_impl, ``lax/this`` the
  speed-up over plain lax.conv on the same work; peak host RSS, its growth over the pre-compile RSS, the peak
  RSS of the timed calls alone (``run``: after compiling, ``rss.reset_peak``), and the accelerator's peak."""
  key = lambda r, mode=None: (r['model'], r['batch_size'], r['steps'], mode or r['mode'], r['conv_impl'])
  seconds = {key(r): r['seconds'] for r in results if 'seconds' in r}
  step_of = lambda r: next((v for (m, b, _, mode, c), v in seconds.items()
                            if (m, b, mode, c) == (r['model'], r['batch_size'], 'train_step', r['conv_impl'])), None)
  torch_of = {key(r)[:4]: r for r in results if r['conv_impl'] == 'torch' and 'seconds' in r}
  header = (f'{"model":<9} {"batch":>5} {"M":>4} {"mode":<11} {"conv":<9} {"wall s":>9} {"x step":>7} '
            f'{"lax/this":>8} {"compile s":>9} {"peak GiB":>8} {"+GiB":>6} {"run GiB":>7} {"dev GiB":>7}'
            + (f' {"t/torch":>7} {"mem/torch":>9} {"run/torch":>9}' if torch_of else ''))
  rows = [header, '-' * len(header)]
  for r in results:
    lead = f'{r["model"]:<9} {r["batch_size"]:>5} {r["steps"]:>4} {r["mode"]:<11} {r["conv_impl"]:<9}'
    if 'error' in r:
      rows.append(f'{lead} {r["error"]}')
      continue
    step = step_of(r)
    lax_seconds = seconds.get(key(dict(r, conv_impl='lax'))) if r['conv_impl'] != 'torch' else None
    ratio = f'{r["seconds"] / step:>6.1f}x' if step else f'{"-":>7}'
    speedup = f'{lax_seconds / r["seconds"]:>7.1f}x' if lax_seconds else f'{"-":>8}'
    compile_seconds = '-' if r['compile_seconds'] is None else f'{r["compile_seconds"]:.1f}'
    row = (f'{lead} {r["seconds"]:>9.3f} {ratio} {speedup} {compile_seconds:>9} '
           f'{r["peak_rss_bytes"] / 2**30:>8.2f} {(r["peak_rss_bytes"] - r["rss_before_bytes"]) / 2**30:>6.2f} '
           f'{_gib(r.get("run_peak_rss_bytes")):>7} {_gib(r.get("device_peak_bytes")):>7}')
    if torch_of:
      ref = torch_of.get(_torch_key(key(r)[:4])) if r['conv_impl'] != 'torch' else None
      run_ratio = (f'{r["run_peak_rss_bytes"] / ref["run_peak_rss_bytes"]:>8.2f}x'
                   if ref and r.get('run_peak_rss_bytes') and ref.get('run_peak_rss_bytes') else f'{"-":>9}')
      row += (f' {r["seconds"] / ref["seconds"]:>6.2f}x {r["peak_rss_bytes"] / ref["peak_rss_bytes"]:>8.2f}x '
              f'{run_ratio}' if ref else f' {"-":>7} {"-":>9} {"-":>9}')
    rows.append(row)
  return '\n'.join(rows)


def main(argv):
  del argv
  if FLAGS.worker:
    print(json.dumps(run_worker(json.loads(FLAGS.worker))))
    return
  if FLAGS.table_from:  # one table from earlier runs' JSON (e.g. a slow baseline measured separately)
    print(format_table([r for path in FLAGS.table_from for r in json.loads(pathlib.Path(path).read_text())['results']]))
    return
  results = []
  for model in FLAGS.models:
    for batch_size in map(int, FLAGS.batch_sizes):
      for steps in map(int, FLAGS.steps):
        for mode in FLAGS.modes:
          for conv_impl in FLAGS.conv_impls:
            config = {'model': model, 'batch_size': batch_size, 'steps': steps, 'mode': mode,
                      'conv_impl': conv_impl, 'image_size': FLAGS.image_size, 'num_classes': FLAGS.num_classes,
                      'repeats': FLAGS.repeats, 'release_heap': FLAGS.release_heap}
            print(f'measuring {config} ...', file=sys.stderr, flush=True)
            results.append(run_in_subprocess(config))
          if FLAGS.reference and mode not in ('streamed', 'exact_stored'):  # its exact stores its steps
            config = dict(config, conv_impl=FLAGS.reference)
            print(f'measuring {config} ...', file=sys.stderr, flush=True)
            results.append(run_in_subprocess(config))
  load = os.getloadavg()
  machine = {'platform': platform.platform(), 'cpus': os.cpu_count(), 'load_average': load,
             'python': platform.python_version()}
  print(format_table(results))
  versions = [f'{r["device"]}, jax {r["jax_version"]}' for r in results if 'jax_version' in r][:1]
  versions += [f'torch {r["torch_version"]} on {r["device"]}' for r in results if 'torch_version' in r][:1]
  print(f'\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} CPUs; {"; ".join(versions)}')
  out = pathlib.Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({'machine': machine, 'results': results}, indent=2))
  print(f'wrote {out}')


if __name__ == '__main__':
  app.run(main)
