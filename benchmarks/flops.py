"""Multiply-add FLOPs of a JAX function, counted on its jaxpr with every loop body times its trip count.

XLA's ``cost_analysis()`` counts a ``while`` body once, whatever its trip count: a ``lax.scan`` of three matmuls
reports the FLOPs of one. ProsPr's exact meta-gradient is two scans (the M inner steps and their reverse), so XLA's
figure undercounts it about 2.5-fold at M = 3 and makes it look as if it ran at a fraction of the train step's rate.
This counter walks the jaxpr instead: ``dot_general`` and ``conv_general_dilated`` (2 FLOPs per multiply-add, as
XLA counts them; a convolution's multiplications by dilation zeros included, as executed), through ``pjit``,
``custom_vjp`` / ``custom_jvp`` calls, ``remat`` and ``cond`` (its largest branch), a ``scan`` body times its
length. Element-wise work is left out: on a CNN it is a fraction of a percent of the multiply-adds.

  python benchmarks/flops.py --model=vgg16 --batch_size=256 --steps=3   # the programs of programs.py
  python benchmarks/flops.py --check   # a scan of matmuls against its unrolled twin, and against XLA's count
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


def _dot_flops(eqn) -> int:
  (lhs_contract, _), _ = eqn.params['dimension_numbers']
  lhs, out = eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape
  return 2 * math.prod(out) * math.prod(lhs[d] for d in lhs_contract)


def _conv_flops(eqn) -> int:
  rhs_spec = eqn.params['dimension_numbers'].rhs_spec  # (out feature, in feature, spatial...)
  kernel, out = eqn.invars[1].aval.shape, eqn.outvars[0].aval.shape
  window = math.prod(kernel[d] for d in rhs_spec[2:])
  in_per_group = kernel[rhs_spec[1]]  # the kernel's in-feature dimension is already per group
  return 2 * math.prod(out) * window * in_per_group


def _sub_jaxprs(eqn) -> list[tuple[Any, int]]:
  """The jaxprs inside ``eqn`` with how many times each runs."""
  name, params = eqn.primitive.name, eqn.params
  if name == 'scan':
    return [(params['jaxpr'], params['length'])]
  if name == 'cond':
    return [(max(params['branches'], key=lambda branch: jaxpr_flops(branch)), 1)]
  if name == 'while':
    raise ValueError('a while_loop has no static trip count: count its body yourself')
  return [(value, 1) for value in params.values() if _is_jaxpr(value)]  # pjit, custom_vjp/jvp calls, remat


def _is_jaxpr(value: Any) -> bool:
  return hasattr(value, 'eqns') or hasattr(getattr(value, 'jaxpr', None), 'eqns')


def jaxpr_flops(jaxpr) -> int:
  """FLOPs of the matmuls and convolutions of a (closed) jaxpr, loops expanded."""
  jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      total += _dot_flops(eqn)
    elif eqn.primitive.name == 'conv_general_dilated':
      total += _conv_flops(eqn)
    else:
      total += sum(times * jaxpr_flops(inner) for inner, times in _sub_jaxprs(eqn))
  return total


def count_flops(fn: Callable, *args) -> int:
  """FLOPs of ``fn(*args)`` (arrays or ``jax.ShapeDtypeStruct``s), every scan body counted once per iteration."""
  import jax
  return jaxpr_flops(jax.make_jaxpr(fn)(*args))


def _self_check() -> None:
  import jax
  import jax.numpy as jnp
  a = jnp.ones((64, 64))
  scanned = lambda x: jax.lax.scan(lambda c, _: (jnp.tanh(c @ a), None), x, None, length=5)[0]
  unrolled = lambda x: jax.lax.scan(lambda c, _: (jnp.tanh(c @ a), None), x, None, length=5, unroll=5)[0]
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (2, 2), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
  grad = jax.grad(lambda x: scanned(x).sum())

  def xla(fn, *args):
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    return (cost[0] if isinstance(cost, (list, tuple)) else cost)['flops']
  rows = [('scan of 5 matmuls', count_flops(scanned, a), xla(scanned, a), 5 * 2 * 64**3),
          ('the same, unrolled', count_flops(unrolled, a), xla(unrolled, a), 5 * 2 * 64**3),
          ('grad of the scan', count_flops(grad, a), xla(grad, a), 2 * 5 * 2 * 64**3),
          ('3x3 conv, stride 2', count_flops(conv, x, w), xla(conv, x, w), 2 * 2 * 4 * 4 * 4 * 9 * 3)]
  for name, ours, theirs, expected in rows:
    print(f'{name:<20} counted {ours:>10,}  XLA {int(theirs):>10,}  expected '
          f'{expected:>10,}')
    assert ours == expected, (name, ours, expected)


def main(argv) -> None:
  del argv
  import json
  import pathlib

  import programs
  from absl import flags
  values = flags.FLAGS
  if values.check:
    _self_check()
    return
  counts = {}
  for name in values.programs:
    fn, args = programs.build(name, values.model, values.batch_size, values.steps, values.conv_impl, abstract=True)
    counts[name] = count_flops(fn, *args) / 1e9
  step = counts.get('train_step')
  print(f'{values.model}, batch {values.batch_size}, M = {values.steps}, {values.conv_impl}: GFLOP (loops expanded)')
  for name, gflop in counts.items():
    print(f'{name:<13} {gflop:9.1f}' + (f'  {gflop / step:5.2f}x the train step' if step else ''))
  if values.out:
    flag_values = {k: values[k].value for k in ('model', 'batch_size', 'steps', 'conv_impl')}
    pathlib.Path(values.out).write_text(json.dumps({'flags': flag_values, 'gflop': counts}, indent=2) + '\n')


if __name__ == '__main__':
  import programs as _programs
  from absl import app, flags as _flags
  _flags.DEFINE_string('model', 'vgg16', 'Model from prospr_jax.models (CIFAR shapes).')
  _flags.DEFINE_integer('batch_size', 256, 'Batch size.')
  _flags.DEFINE_integer('steps', 3, 'M, the inner steps.')
  _flags.DEFINE_string('conv_impl', 'auto', 'Convolution implementation (prospr_jax/xla_cpu/conv_impl.py).')
  _flags.DEFINE_list('programs', list(_programs.PROGRAMS), 'Programs to count.')
  _flags.DEFINE_string('out', None, 'Also write the counts as JSON here.')
  _flags.DEFINE_bool('check', False, 'Only run the self-check.')
  app.run(main)
