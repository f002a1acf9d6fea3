"""What holds the memory: XLA's buffer analysis per compiled program, and the largest live buffers.

Compiles (does not run) a model's train step, exact and first-order ProsPr with a conv implementation and prints
XLA's memory analysis of each program: arguments, outputs, temporaries (the live intermediate buffers, e.g. im2col
columns kept for the backward pass, scan residuals) and the sum, the program's own peak. With ``--top`` it also
lists the largest temporary buffers from XLA's buffer assignment, so a change can be traced to the buffers it frees.
Peak process RSS adds the runtime, the compiler and the input batches on top (``benchmarks/saliency.py``).

  python benchmarks/memory.py --model=vgg16 --batch_size=256 --steps=3 --conv_impls=auto
"""

from __future__ import annotations

import json
import pathlib
import re

import programs
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string('model', 'vgg16', 'Model from prospr_jax.models (CIFAR shapes).')
flags.DEFINE_integer('batch_size', 256, 'Batch size.')
flags.DEFINE_integer('steps', 3, 'M for ProsPr.')
flags.DEFINE_list('conv_impls', ['auto'], 'Convolution implementations (prospr_jax/xla_cpu/conv_impl.py); '
                  'name:MiB caps the im2col columns or Winograd tiles held at once (lean im2col, lean Winograd).')
flags.DEFINE_list('programs', list(programs.PROGRAMS), 'Programs to analyse.')
flags.DEFINE_bool('donate', True, 'The train step donates its params and optimizer state (as the trainer does).')
flags.DEFINE_integer('top', 0, 'List this many of the largest temporary buffers per program.')
flags.DEFINE_string('out', None, 'Also write the results as JSON here.')


_INSTRUCTION = re.compile(r'\s*(?:ROOT )?%?([\w.\-]+) = (f32|f64|s32|bf16|pred)\[([\d,]*)\]')
_WIDTH = {'f32': 4, 's32': 4, 'f64': 8, 'bf16': 2, 'pred': 1}


def largest_buffers(compiled, top: int) -> list[tuple[int, str]]:
  """The ``top`` largest array-valued instructions of the optimized program: ``(bytes, 'name dtype[shape]')``.

  An upper bound on what is live (XLA may alias or fuse some of them away), enough to see which layers' buffers
  dominate, e.g. ``concatenate`` (im2col columns) beside ``convolution`` outputs.
  """
  sizes = {}
  for line in compiled.as_text().splitlines():
    match = _INSTRUCTION.match(line)
    if match:
      name, dtype, dims = match.groups()
      count = 1
      for d in (int(d) for d in dims.split(',') if d):
        count *= d
      sizes[f'{name} {dtype}[{dims}]'] = count * _WIDTH[dtype]
  return sorted(((size, name) for name, size in sizes.items()), reverse=True)[:top]


def analyse(name: str, conv_impl: str) -> dict:
  import jax
  fn, args = programs.build(name, FLAGS.model, FLAGS.batch_size, FLAGS.steps, conv_impl, abstract=True)
  donate = (0, 1) if name == 'train_step' and FLAGS.donate else ()
  compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
  stats = compiled.memory_analysis()
  row = dict(model=FLAGS.model, batch_size=FLAGS.batch_size, steps=FLAGS.steps, program=name, conv_impl=conv_impl,
             argument_bytes=stats.argument_size_in_bytes, output_bytes=stats.output_size_in_bytes,
             alias_bytes=stats.alias_size_in_bytes, temp_bytes=stats.temp_size_in_bytes)
  row['total_bytes'] = row['argument_bytes'] + row['output_bytes'] - row['alias_bytes'] + row['temp_bytes']
  if FLAGS.top:
    row['largest'] = largest_buffers(compiled, FLAGS.top)
  return row


def format_table(rows: list[dict]) -> str:
  gib = lambda n: f'{n / 2**30:.2f}'
  header = f'{"program":<12} {"conv":<9} {"args GiB":>8} {"out GiB":>7} {"alias":>6} {"temp GiB":>8} {"total GiB":>9}'
  lines = [header, '-' * len(header)]
  for r in rows:
    lines.append(f'{r["program"]:<12} {r["conv_impl"]:<9} {gib(r["argument_bytes"]):>8} {gib(r["output_bytes"]):>7} '
                 f'{gib(r["alias_bytes"]):>6} {gib(r["temp_bytes"]):>8} {gib(r["total_bytes"]):>9}')
    for size, buffer in r.get('largest', []):
      lines.append(f'    {size / 2**20:8.1f} MiB  {buffer}')
  return '\n'.join(lines)


def main(argv):
  del argv
  rows = [analyse(name, impl) for name in FLAGS.programs for impl in FLAGS.conv_impls]
  print(f'{FLAGS.model}, batch {FLAGS.batch_size}, M = {FLAGS.steps}: XLA memory analysis of the compiled programs')
  print(format_table(rows))
  if FLAGS.out:
    pathlib.Path(FLAGS.out).write_text(json.dumps(rows, indent=1) + '\n')


if __name__ == '__main__':
  app.run(main)
