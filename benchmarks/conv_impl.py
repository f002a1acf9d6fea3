"""Which convolution implementation is fastest for each layer shape on this machine (the basis of ``auto``).

For every distinct 3x3 layer of ResNet-20 and VGG-16 at CIFAR shapes it times, per implementation, a
second-order pass inside a ``lax.scan`` (the shape of an exact ProsPr meta-gradient): the gradient of the
squared norm of the weight gradient, over 2 scan steps; or (``--program=train_step``) a forward and backward
pass. Median of repeats after warm-up. ``winograd`` (``prospr_jax/xla_cpu/winograd.py``) runs on stride-1 layers only.

  python benchmarks/conv_impl.py --batch_size=64
  python benchmarks/conv_impl.py --program=train_step --batch_size=256 --impls=im2col,winograd
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from prospr_jax.xla_cpu import conv, conv_impl
from prospr_jax.xla_cpu.winograd import winograd_conv

FLAGS = flags.FLAGS
flags.DEFINE_integer('batch_size', 64, 'Batch size.')
flags.DEFINE_integer('repeats', 3, 'Timed calls after warm-up.')
flags.DEFINE_list('impls', ['lax', 'canonical', 'im2col'], 'Implementations to compare (conv_impl names, or '
                  'winograd and winograd4: F(2x2, 3x3) and F(4x4, 3x3)).')
flags.DEFINE_enum('program', 'second_order_in_a_scan', ['second_order_in_a_scan', 'train_step'], 'What to time.')

# (spatial size, input channels, output channels, stride): the 3x3 layers of ResNet-20 and VGG-16 on 32x32.
LAYERS = [(32, 3, 16, 1), (32, 16, 16, 1), (32, 16, 32, 2), (16, 32, 32, 1), (16, 32, 64, 2), (8, 64, 64, 1),
          (32, 3, 64, 1), (32, 64, 64, 1), (16, 64, 128, 1), (16, 128, 128, 1), (8, 128, 256, 1), (8, 256, 256, 1),
          (4, 256, 512, 1), (4, 512, 512, 1), (2, 512, 512, 1)]


def second_order_in_a_scan(conv_fn):
  def loss(w, x):
    return jnp.sum(conv_fn(x, w, (1, 1), 'SAME', dimension_numbers=conv.NHWC) ** 2)

  def step(w, x):
    g = jax.grad(loss)(w, x)
    return w - 1e-3 * g, None

  def meta(w, xs):
    w_final, _ = jax.lax.scan(step, w, xs)
    return loss(w_final, xs[0])

  return jax.jit(jax.grad(meta))


def forward_and_backward(conv_fn):
  """A train step's share: the layer's output and the gradients of its input and kernel."""
  def step(w, xs):
    y, pullback = jax.vjp(lambda x, w: conv_fn(x, w, (1, 1), 'SAME', dimension_numbers=conv.NHWC), xs[0], w)
    return pullback(jnp.tanh(y))
  return jax.jit(step)


def winograd(tile):
  def conv_fn(x, w, strides, padding, dimension_numbers):
    del dimension_numbers
    return winograd_conv(x, w, strides, conv._explicit_pads(x, w, strides, padding), tile)  # pylint: disable=protected-access
  return conv_fn


WINOGRAD = {'winograd': winograd(2), 'winograd4': winograd(4)}  # F(2x2, 3x3) and F(4x4, 3x3)


def time_layer(impl, size, cin, cout, stride):
  if impl in WINOGRAD and stride != 1:
    return float('nan')
  fn = WINOGRAD.get(impl) or conv_impl.resolve_conv_impl(impl, 'cpu') or (
      lambda x, w, s, p, dimension_numbers: jax.lax.conv_general_dilated(x, w, s, p,
                                                                         dimension_numbers=dimension_numbers))
  if stride != 1:
    base = fn
    fn = lambda x, w, s, p, dimension_numbers: base(x, w, (stride, stride), p, dimension_numbers=dimension_numbers)
  xs = jax.random.normal(jax.random.key(0), (2, FLAGS.batch_size, size, size, cin))
  w = jax.random.normal(jax.random.key(1), (3, 3, cin, cout)) * 0.05
  f = (second_order_in_a_scan if FLAGS.program == 'second_order_in_a_scan' else forward_and_backward)(fn)
  jax.block_until_ready(f(w, xs))
  times = []
  for _ in range(FLAGS.repeats):
    start = time.perf_counter()
    jax.block_until_ready(f(w, xs))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv):
  del argv
  what = 'second-order pass in a 2-step scan' if FLAGS.program == 'second_order_in_a_scan' else 'forward + backward'
  print(f'{what}, batch {FLAGS.batch_size}, {jax.devices()[0].device_kind}; seconds')
  print(f'{"size":>4} {"in":>4} {"out":>4} {"stride":>6} ' + ' '.join(f'{i:>10}' for i in FLAGS.impls) + '  fastest')
  for layer in LAYERS:
    seconds = {impl: time_layer(impl, *layer) for impl in FLAGS.impls}
    fastest = min((impl for impl in seconds if seconds[impl] == seconds[impl]), key=seconds.get)  # NaN: not run
    print(f'{layer[0]:>4} {layer[1]:>4} {layer[2]:>4} {layer[3]:>6} '
          + ' '.join(f'{seconds[i]:>10.4f}' for i in FLAGS.impls) + f'  {fastest}', flush=True)


if __name__ == '__main__':
  app.run(main)
