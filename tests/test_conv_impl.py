"""Convolution implementations equal lax.conv, to second order, and keep XLA:CPU on its fast path."""

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import prospr_jax
from prospr_jax.models import get_model
from prospr_jax.xla_cpu import conv, conv_impl as impls, lean
from prospr_jax.xla_cpu.winograd import winograd_conv

IMPLS = {'canonical': conv.canonical_conv, 'im2col': conv.im2col_conv, 'auto_cpu': impls.auto_cpu_conv}


def lax_conv(x, w, strides, padding):
  return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=conv.NHWC)


CASES = [(k, s, p) for k in (1, 3) for s in ((1, 1), (2, 2)) for p in ('SAME', 'VALID', ((1, 2), (0, 1)))]


@pytest.mark.parametrize('impl', [pytest.param(i, marks=pytest.mark.slow) if i == 'auto_cpu' else i
                                  for i in sorted(IMPLS)])
@pytest.mark.parametrize('kernel, strides, padding', CASES)
def test_outputs_and_first_and_second_order_gradients_equal_lax_conv(impl, kernel, strides, padding):
  x = jax.random.normal(jax.random.key(0), (2, 7, 6, 3))
  w = jax.random.normal(jax.random.key(1), (kernel, kernel, 3, 4))
  ours = lambda x, w: IMPLS[impl](x, w, strides, padding, dimension_numbers=conv.NHWC)
  ref = lambda x, w: lax_conv(x, w, strides, padding)
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  # A second-order objective: both first-order gradients feed a loss, differentiated again.
  second = lambda f: lambda x, w: sum(jnp.sum(jnp.cos(g)) for g in jax.grad(loss(f), (0, 1))(x, w))
  for make in (lambda f: f, lambda f: jax.grad(loss(f), (0, 1)), lambda f: jax.grad(second(f), (0, 1))):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11), make(ours)(x, w),
                 make(ref)(x, w))


def assert_equal_to_second_order_and_under_vmap(ours, ref, x, w):
  """Values, first- and second-order gradients (both first-order gradients feed a loss, differentiated again) and a
  vmapped gradient (GraSP maps over batches) of ``ours`` equal ``ref``'s in float64."""
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  second = lambda f: lambda x, w: sum(jnp.sum(jnp.cos(g)) for g in jax.grad(loss(f), (0, 1))(x, w))
  close = lambda a, b: jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-11, atol=1e-11), a, b)
  for make in (lambda f: f, lambda f: jax.grad(loss(f), (0, 1)), lambda f: jax.grad(second(f), (0, 1))):
    close(make(ours)(x, w), make(ref)(x, w))
  batched = jax.vmap(jax.grad(loss(ours), (0, 1))), jax.vmap(jax.grad(loss(ref), (0, 1)))
  close(*(f(jnp.stack([x, 2 * x]), jnp.stack([w, -w])) for f in batched))


WINOGRAD_CASES = [((2, 7, 6, 3), 'SAME'), ((2, 7, 6, 3), 'VALID'), ((1, 5, 8, 2), ((1, 2), (0, 1))),
                  ((1, 3, 3, 2), ((2, 0), (0, 2)))]


# F(4x4, 3x3) is not used by default (its float32 rounding). One F(2x2, 3x3) case with partial tiles is fast.
@pytest.mark.parametrize('shape, padding, tile', [
    (*case, tile) if (case, tile) == (WINOGRAD_CASES[1], 2) else pytest.param(*case, tile, marks=pytest.mark.slow)
    for tile in (2, 4) for case in WINOGRAD_CASES])
def test_winograd_equals_lax_conv_to_second_order_and_under_vmap(shape, padding, tile):
  """F(2x2, 3x3) and F(4x4, 3x3) on output sizes that are and are not whole tiles (a partial tile gets zero rows
  or columns, cut off), asymmetric pads."""
  x = jax.random.normal(jax.random.key(0), shape)
  w = jax.random.normal(jax.random.key(1), (3, 3, shape[-1], 4))
  pads = conv._explicit_pads(x, w, (1, 1), padding)
  ours = lambda x, w: winograd_conv(x, w, (1, 1), pads, tile)
  ref = lambda x, w: lax_conv(x, w, (1, 1), padding)
  assert_equal_to_second_order_and_under_vmap(ours, ref, x, w)


def test_winograd_refuses_what_it_cannot_compute():
  with pytest.raises(ValueError, match='winograd_conv is for 3x3 kernels at stride 1'):
    winograd_conv(jnp.ones((1, 8, 8, 2)), jnp.ones((3, 3, 2, 2)), (2, 2), ((1, 1), (1, 1)))


def winograd_tile(x_shape, k_shape, strides=(1, 1), pads=((1, 1), (1, 1))):
  return impls._winograd_tile(jnp.ones(x_shape), jnp.ones(k_shape), strides, pads)


def test_auto_on_cpu_takes_winograd_for_wide_3x3_stride_1_layers_with_enough_tiles():
  assert winograd_tile((256, 32, 32, 64), (3, 3, 64, 64)) == 2
  assert winograd_tile((256, 2, 2, 512), (3, 3, 512, 512)) == 2   # VGG-16's last layers at batch 256: 256 tiles
  assert winograd_tile((16, 4, 4, 512), (3, 3, 512, 512)) == 2    # 64 tiles
  assert winograd_tile((16, 2, 2, 512), (3, 3, 512, 512)) == 0    # 16 tiles: the kernel's transform outweighs the saving
  assert winograd_tile((256, 1, 1, 512), (3, 3, 512, 512)) == 0   # a 2x2 tile would compute 4x the output
  assert winograd_tile((64, 8, 8, 64), (3, 3, 64, 64)) == 2       # ResNet-20's last stage at batch 64
  assert winograd_tile((256, 32, 32, 32), (3, 3, 32, 32)) == 0    # narrow: canonical
  assert winograd_tile((256, 32, 32, 64), (3, 3, 64, 64), (2, 2)) == 0
  assert winograd_tile((256, 32, 32, 64), (1, 1, 64, 64)) == 0
  assert winograd_tile((256, 8, 8, 64), (3, 3, 64, 64), pads=((3, 3), (1, 1))) == 0
  x, w = jnp.ones((16, 4, 4, 512), jnp.float32), jnp.ones((3, 3, 512, 512), jnp.float32)
  hlo = jax.jit(lambda x, w: impls.auto_cpu_conv(x, w, (1, 1), 'SAME', dimension_numbers=conv.NHWC)).lower(
      x, w).as_text()
  assert 'convolution' not in hlo and 'dot_general' in hlo


def test_with_4x4_tiles_allowed_auto_takes_the_largest_tile_that_fits_the_output(monkeypatch):
  monkeypatch.setattr(impls, 'WINOGRAD_TILES', (4, 2))  # F(4x4, 3x3): not by default (its float32 rounding)
  assert winograd_tile((256, 32, 32, 64), (3, 3, 64, 64)) == 4
  assert winograd_tile((256, 7, 7, 256), (3, 3, 256, 256)) == 4   # partial tiles (28x28 inputs)
  assert winograd_tile((64, 4, 4, 512), (3, 3, 512, 512)) == 4    # 64 tiles of 4x4
  assert winograd_tile((16, 4, 4, 512), (3, 3, 512, 512)) == 2    # 16 tiles of 4x4 are too few, 64 of 2x2 are not
  assert winograd_tile((256, 2, 2, 512), (3, 3, 512, 512)) == 2   # a 4x4 tile would compute 4x the outputs


def test_non_plain_convolutions_fall_back_to_lax():
  x, w = jnp.ones((1, 5, 5, 4)), jnp.ones((3, 3, 2, 4))  # grouped: feature_group_count=2
  out = conv.canonical_conv(x, w, (1, 1), 'SAME', dimension_numbers=conv.NHWC, feature_group_count=2)
  np.testing.assert_array_equal(out, jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=conv.NHWC,
                                                                   feature_group_count=2))


def test_auto_is_lax_off_cpu_and_per_layer_on_cpu():
  assert impls.resolve_conv_impl('auto', 'gpu') is None and impls.resolve_conv_impl('auto', 'tpu') is None
  assert impls.resolve_conv_impl('auto', 'cpu') is impls.auto_cpu_conv
  assert impls.resolve_conv_impl('lax') is None
  with pytest.raises(ValueError, match='unknown conv_impl .eigen.; valid: auto, lax, canonical, im2col, or auto:<MiB>'):
    impls.resolve_conv_impl('eigen')


def meta_gradient_problem(model_name, conv_impl, size, **kwargs):
  model = get_model(model_name, 10, conv_general_dilated=impls.resolve_conv_impl(conv_impl, 'cpu'), **kwargs)
  x = jax.random.normal(jax.random.key(0), (2, 2, size, size, 3))  # M = 1, batches of 2
  y = jnp.arange(4).reshape(2, 2) % 10
  variables = model.init(jax.random.key(1), x[0], train=False)
  variables = jax.tree.map(lambda v: v.astype(jnp.float64), variables)
  return variables['params'], (x, y), prospr_jax.flax_loss_fn(model, variables)


@pytest.mark.slow
def test_the_optimized_hlo_of_an_exact_meta_gradient_has_only_canonical_convolutions():
  model = get_model('resnet20', 10, conv_general_dilated=impls.resolve_conv_impl('auto', 'cpu'))
  x, y = jnp.ones((2, 2, 16, 16, 3), jnp.float32), jnp.zeros((2, 2), jnp.int32)
  variables = model.init(jax.random.key(0), x[0], train=False)
  loss_fn = prospr_jax.flax_loss_fn(model, variables)
  hlo = jax.jit(lambda p: prospr_jax.prospr_meta_gradient(p, (x, y), loss_fn=loss_fn)).lower(
      variables['params']).compile().as_text()
  convolutions = [line for line in hlo.splitlines() if re.search(r'= \S+ convolution\(', line)]
  labels = collections.Counter(re.search(r'dim_labels=([^,\s]+)', line).group(1) for line in convolutions)
  assert convolutions, "ResNet-20's stride-1 layers with 16 and 32 channels use canonical convolutions"
  assert set(labels) == {'b01f_01io->b01f'}, labels
  assert not any('rhs_reversal' in line for line in convolutions)


# Small nets that still have layers on both sides of auto's 64-input-channel switch (ResNet-20's last stage has 64);
# their 64-channel layers take Winograd (every batch size, by the patched threshold), lean Winograd in the lean
# setting; with 4x4 tiles allowed, F(4x4, 3x3) on VGG-11's 8x8 and 4x4 outputs and F(2x2, 3x3) on its 2x2 ones.
# VGG pools 4 times. auto:0.01: lean im2col, with VGG's 32x32 layers split into one-image chunks.
@pytest.mark.parametrize('model_name, size, auto, kwargs', [('resnet20', 8, 'auto', {}),
                                                            ('vgg11', 32, 'auto', {'width': 0.25}),
                                                            ('vgg11', 32, 'auto', {'width': 0.25, 'tiles': (4, 2)}),
                                                            ('vgg11', 32, 'auto:0.01', {'width': 0.25})])
@pytest.mark.slow
def test_saliency_with_auto_equals_saliency_with_lax(model_name, size, auto, kwargs, monkeypatch):
  monkeypatch.setattr(impls, 'WINOGRAD_MIN_TILES', 1)  # these batches are tiny: Winograd for every wide 3x3 layer
  kwargs = dict(kwargs)
  monkeypatch.setattr(impls, 'WINOGRAD_TILES', kwargs.pop('tiles', impls.WINOGRAD_TILES))
  params, batches, lax_loss = meta_gradient_problem(model_name, 'lax', size, **kwargs)
  _, _, auto_loss = meta_gradient_problem(model_name, auto, size, **kwargs)
  a = prospr_jax.prospr_saliency(params, batches, loss_fn=auto_loss)
  b = prospr_jax.prospr_saliency(params, batches, loss_fn=lax_loss)
  # float64 round-off differs between the implementations: compare against each layer's largest score.
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=0, atol=1e-9 * float(jnp.max(jnp.abs(v)))), a, b)


@pytest.mark.parametrize('kernel, strides, padding', [(3, (1, 1), 'SAME'), (3, (2, 2), 'VALID'),
                                                     (3, (2, 2), ((1, 2), (0, 1))), (1, (2, 2), 'SAME')])
@pytest.mark.slow
def test_lean_im2col_over_batch_chunks_equals_lax_conv_to_second_order(kernel, strides, padding):
  lean = impls.resolve_conv_impl('im2col:1e-6', 'cpu')  # one image per chunk: a loop of 3
  x = jax.random.normal(jax.random.key(0), (3, 7, 6, 3))
  w = jax.random.normal(jax.random.key(1), (kernel, kernel, 3, 4))
  ours = lambda x, w: lean(x, w, strides, padding, dimension_numbers=conv.NHWC)
  ref = lambda x, w: lax_conv(x, w, strides, padding)
  assert_equal_to_second_order_and_under_vmap(ours, ref, x, w)


@pytest.mark.parametrize('shape, padding', [((3, 7, 6, 3), 'SAME'), ((3, 5, 8, 2), ((1, 2), (0, 1))),
                                            ((3, 3, 3, 2), ((2, 0), (0, 2)))])
@pytest.mark.parametrize('tile', [2, 4])
@pytest.mark.slow
def test_lean_winograd_over_batch_chunks_equals_lax_conv_to_second_order(shape, padding, tile):
  """F, D (Winograd with the flipped kernel) and W (tile products summed over chunks), one image per chunk."""
  x = jax.random.normal(jax.random.key(0), shape)
  w = jax.random.normal(jax.random.key(1), (3, 3, shape[-1], 4))
  pads = conv._explicit_pads(x, w, (1, 1), padding)
  ours = lambda x, w: lean.lean_winograd(1, tile)(x, w, (1, 1), pads)
  ref = lambda x, w: lax_conv(x, w, (1, 1), padding)
  assert_equal_to_second_order_and_under_vmap(ours, ref, x, w)


@pytest.mark.slow
def test_a_gradient_through_lean_im2col_never_holds_the_whole_batchs_columns():
  """The backward pass rebuilds each chunk's columns: XLA may not keep the forward's (by CSE or early scheduling)."""
  x, w = jnp.ones((32, 16, 16, 16), jnp.float32), jnp.ones((3, 3, 16, 16), jnp.float32)
  columns_bytes = 32 * 16 * 16 * 3 * 3 * 16 * 4  # 4.7 MB
  temp = {}
  for name, spec in (('im2col', 'im2col'), ('lean', f'im2col:{columns_bytes / 32 / 2**20}')):  # lean: one image a chunk
    conv_fn = impls.resolve_conv_impl(spec, 'cpu')
    loss = lambda x, w, f=conv_fn: jnp.sum(jnp.tanh(f(x, w, (1, 1), 'SAME', dimension_numbers=conv.NHWC)))
    temp[name] = jax.jit(jax.grad(loss, (0, 1))).lower(x, w).compile().memory_analysis().temp_size_in_bytes
  assert temp['im2col'] > columns_bytes > 2 * temp['lean'], temp  # measured: 2.1x and 0.4x the columns


def test_a_gradient_through_lean_winograd_never_holds_the_whole_batchs_tiles():
  """Plain Winograd keeps every tile for the backward pass; lean Winograd rebuilds them, one chunk at a time."""
  x, w = jnp.ones((32, 16, 16, 64), jnp.float32), jnp.ones((3, 3, 64, 64), jnp.float32)
  tiles_bytes = 32 * 8 * 8 * 16 * 64 * 4  # F(2x2, 3x3): 16 values per 2x2 output tile, 8.4 MB
  temp = {}
  for name, conv_fn in (('winograd', lambda x, w: winograd_conv(x, w, (1, 1), ((1, 1), (1, 1)))),
                        ('lean', lambda x, w: lean.lean_winograd(3 * tiles_bytes // 32)(x, w, (1, 1), ((1, 1), (1, 1))))):
    loss = lambda x, w, f=conv_fn: jnp.sum(jnp.tanh(f(x, w)))  # lean: one image per chunk
    temp[name] = jax.jit(jax.grad(loss, (0, 1))).lower(x, w).compile().memory_analysis().temp_size_in_bytes
  # measured: 3.0x and 0.78x the tiles (the rest is x, y and their gradients: 2.1 MB each)
  assert temp['winograd'] > 2 * tiles_bytes and temp['lean'] < tiles_bytes, temp


def test_the_lean_setting_runs_winograd_layers_as_lean_winograd_in_batch_chunks():
  x, w = jnp.ones((64, 8, 8, 64), jnp.float32), jnp.ones((3, 3, 64, 64), jnp.float32)
  lean = impls.resolve_conv_impl('auto:1', 'cpu')  # 64 images' tiles are 4 MiB, 3x that per op
  loss = lambda x, w: jnp.sum(jnp.tanh(lean(x, w, (1, 1), 'SAME', dimension_numbers=conv.NHWC)))
  hlo = jax.jit(jax.grad(loss, (0, 1))).lower(x, w).as_text()
  assert 'convolution' not in hlo and 'while' in hlo  # Winograd's matmuls, in chunk loops
  np.testing.assert_allclose(lean(x, w, (1, 1), 'SAME', dimension_numbers=conv.NHWC),
                             winograd_conv(x, w, (1, 1), ((1, 1), (1, 1))), rtol=1e-6)


def test_lean_conv_settings_resolve_to_one_function_each_and_bad_budgets_are_refused():
  assert impls.resolve_conv_impl('auto:64', 'cpu') is impls.resolve_conv_impl('auto:64.0', 'cpu')
  assert impls.resolve_conv_impl('auto:64', 'gpu') is None  # off-CPU: plain lax, the budget is moot
  for spec in ('auto:0', 'auto:-1', 'auto:nan', 'auto:inf', 'auto:', 'im2col:lots', 'canonical:64', 'lax:8'):
    with pytest.raises(ValueError, match='the budget after ":" must be a positive number of MiB'):
      impls.resolve_conv_impl(spec, 'cpu')


def test_the_one_parser_reads_a_name_and_an_optional_budget():
  assert impls.parse_conv_impl('auto') == ('auto', None)
  assert impls.parse_conv_impl('im2col:32') == ('im2col', 32.0)
  with pytest.raises(ValueError, match='unknown conv_impl .winograd:4.'):
    impls.parse_conv_impl('winograd:4')
