"""The model zoo: layer lists, parameter counts and initialisers pinned to the authors' models, registry."""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import prospr_jax
from prospr_jax.models import MODELS, batch_norm, get_model, vgg
from prospr_jax.xla_cpu import pooling

TORCHVISION_RESNETS = ('resnet18', 'resnet34', 'resnet50')  # small images need small_input (the CIFAR stem)


def init(name, image_size=32, channels=3, num_classes=10, seed=0, **kwargs):
  model = get_model(name, num_classes, **kwargs)
  x = jnp.zeros((1, image_size, image_size, channels))
  return model, model.init(jax.random.key(seed), x, train=False)


def count_params(name, num_classes, image_size, channels=3, **kwargs):
  model = get_model(name, num_classes, **kwargs)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, channels)),
                                             train=False))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes['params']))


@pytest.mark.parametrize('name, num_classes, image_size, channels, kwargs, expected', [
    ('vgg16', 10, 32, 3, {}, 14_728_266),                            # open_lth's cifar_vgg_16
    ('resnet20', 10, 32, 3, {}, 269_722),
    ('resnet18', 10, 32, 3, {'small_input': True}, 11_173_962),
    ('resnet50', 1000, 224, 3, {}, 25_557_032),                      # torchvision resnet50
    ('vgg19', 1000, 224, 3, {'imagenet_head': True}, 143_678_248),   # the authors' list: vgg19_bn's weights
    ('lenet300_100', 10, 28, 1, {}, 266_610),                        # 784*300+300 + 300*100+100 + 100*10+10
    ('lenet5', 10, 28, 1, {}, 431_080),                              # LeNet-5-Caffe (SNIP, Lee et al. 2019)
])
def test_parameter_counts_match_the_reference_models(name, num_classes, image_size, channels, kwargs, expected):
  assert count_params(name, num_classes, image_size, channels, **kwargs) == expected


@pytest.mark.slow
def test_every_model_maps_images_to_logits():
  for name in ('small_cnn', 'vgg11', 'resnet20', 'resnet18'):
    model, variables = init(name, num_classes=7, **({'small_input': True} if name == 'resnet18' else {}))
    x = jnp.ones((2, 32, 32, 3))
    assert model.apply(variables, x, train=False).shape == (2, 7)


@pytest.mark.parametrize('name', sorted(MODELS))
def test_every_registered_model_maps_a_28x28_grey_batch_to_logits(name):
  model = get_model(name, 10, **({'small_input': True} if name in TORCHVISION_RESNETS else {}))
  x = jnp.ones((2, 28, 28, 1))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  assert jax.eval_shape(lambda v: model.apply(v, x, train=False), variables).shape == (2, 10)


@pytest.mark.parametrize('name', [pytest.param('resnet20', marks=pytest.mark.slow),
                                  pytest.param('vgg16', marks=pytest.mark.slow), 'lenet5', 'lenet300_100'])
def test_the_fashion_mnist_networks_run_on_28x28_grey_images(name):
  model, variables = init(name, image_size=28, channels=1)
  x = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
  logits, _ = model.apply(variables, x, train=True, mutable=['batch_stats'])
  assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))


def vgg_last_map(depth, image_size, channels=3, width=1.0):
  """The conv stack's last activation (the input of the head), the logits and the params, in eval mode."""
  model, variables = init(f'vgg{depth}', image_size, channels, width=width)
  x = jax.random.normal(jax.random.key(2), (2, image_size, image_size, channels))
  logits, state = model.apply(variables, x, train=False, capture_intermediates=True)
  last_bn = f'BatchNorm_{sum(1 for layer in vgg.STACKS[depth] if layer != "M") - 1}'
  return nn.relu(state['intermediates'][last_bn]['__call__'][0]), logits, variables['params']


@pytest.mark.parametrize('depth', [11, 13, 16, 19])
def test_vgg_has_four_max_pools_and_no_pool_after_the_last_conv(depth):
  assert vgg.STACKS[depth].count('M') == 4 and vgg.STACKS[depth][-1] != 'M'


@pytest.mark.slow
def test_vgg_cifar_head_averages_the_last_2x2_map_into_one_dense():
  last_map, logits, params = vgg_last_map(16, 32, width=0.25)
  assert last_map.shape == (2, 2, 2, 128)
  pooled = (last_map[:, 0, 0] + last_map[:, 0, 1] + last_map[:, 1, 0] + last_map[:, 1, 1]) / 4
  dense = params['Dense_0']
  np.testing.assert_allclose(logits, pooled @ dense['kernel'] + dense['bias'], rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_vgg_on_28x28_pools_to_one_pixel_before_the_head():
  last_map, _, _ = vgg_last_map(16, 28, channels=1, width=0.25)
  assert last_map.shape == (2, 1, 1, 128)  # 28 -> 14 -> 7 -> 3 -> 1


def test_vgg19_imagenet_head_average_pools_the_14x14_map_to_7x7():
  model = get_model('vgg19', 1000, imagenet_head=True)
  x = jnp.zeros((1, 224, 224, 3))
  _, state = jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), x, train=False), x, train=False,
                                                capture_intermediates=True))
  assert state['intermediates']['BatchNorm_15']['__call__'][0].shape == (1, 14, 14, 512)
  assert state['intermediates']['Dense_0']['__call__'][0].shape == (1, 4096)  # from 7 * 7 * 512 inputs


def test_adaptive_average_pool_matches_torch_windows():
  x = jnp.arange(2 * 5 * 4 * 1, dtype=jnp.float32).reshape(2, 5, 4, 1)
  pooled = vgg.adaptive_avg_pool(x, (3, 2))
  # torch: rows [0, 2), [1, 4), [3, 5); columns [0, 2), [2, 4)
  expected = jnp.stack([jnp.stack([x[:, r0:r1, c0:c1].mean(axis=(1, 2)) for c0, c1 in ((0, 2), (2, 4))], 1)
                        for r0, r1 in ((0, 2), (1, 4), (3, 5))], 1)
  np.testing.assert_allclose(pooled, expected, rtol=1e-6)
  np.testing.assert_allclose(vgg.adaptive_avg_pool(x[:, :4], (2, 2)), nn.avg_pool(x[:, :4], (2, 2), (2, 2)))


@pytest.mark.parametrize('size', [8, 7])
def test_max_pool_2x2_equals_flax_max_pool_in_value_and_gradient(size):
  x = jax.random.normal(jax.random.key(3), (2, size, size, 3))  # no ties
  reference = lambda x: nn.max_pool(x, (2, 2), (2, 2))
  np.testing.assert_array_equal(pooling.max_pool_2x2(x), reference(x))
  loss = lambda pool: lambda x: jnp.sum(jnp.sin(pool(x)))
  np.testing.assert_allclose(jax.grad(loss(pooling.max_pool_2x2))(x), jax.grad(loss(reference))(x), rtol=1e-12)


class PoolNet(nn.Module):
  """Three conv - BatchNorm - ReLU - pool blocks, as in VGG, with the pool passed in."""
  pool: Callable[[jax.Array], jax.Array]

  @nn.compact
  def __call__(self, x, train=True):
    for features in (8, 8, 16):
      x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(features, (3, 3), padding=1)(x)))
      x = self.pool(x)
    return nn.Dense(10)(x.mean(axis=(1, 2)))


@pytest.mark.slow
def test_max_pool_2x2_meta_gradients_equal_flax_max_pools():
  """Second derivatives are exact: a reshape-and-max pool is off by about 24% here."""
  batches = (jax.random.normal(jax.random.key(4), (2, 2, 16, 16, 3)), jnp.arange(4).reshape(2, 2) % 10)

  def meta_gradient(pool):
    model = PoolNet(pool)
    variables = model.init(jax.random.key(0), batches[0][0], train=False)
    return prospr_jax.prospr_meta_gradient(variables['params'], batches,
                                           loss_fn=prospr_jax.flax_loss_fn(model, variables))

  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-9, atol=1e-12 * float(jnp.abs(v).max())),
               meta_gradient(pooling.max_pool_2x2), meta_gradient(lambda x: nn.max_pool(x, (2, 2), (2, 2))))


@pytest.mark.slow
def test_vgg_pools_with_max_pool_2x2_on_cpu_and_equals_flax_max_pool_to_second_order():
  """No ``reduce-window`` index arrays in VGG's derivative on CPU; the meta-gradient is that of ``nn.max_pool``."""
  assert jax.default_backend() == 'cpu'
  batches = (jax.random.normal(jax.random.key(5), (2, 2, 16, 16, 3)), jnp.arange(4).reshape(2, 2) % 10)

  def meta_gradient(**kwargs):
    model = get_model('vgg11', 10, width=1 / 16, **kwargs)
    variables = model.init(jax.random.key(0), batches[0][0], train=False)
    variables = jax.tree.map(lambda a: a.astype(jnp.float64), variables)  # VGG's initializers draw float32
    loss_fn = prospr_jax.flax_loss_fn(model, variables)
    grad_ops = str(jax.make_jaxpr(jax.grad(loss_fn))(variables['params'], (batches[0][0], batches[1][0])))
    return prospr_jax.prospr_meta_gradient(variables['params'], batches, loss_fn=loss_fn), grad_ops

  shipped, shipped_ops = meta_gradient()
  flax_pool, flax_ops = meta_gradient(max_pool=lambda x: nn.max_pool(x, (2, 2), (2, 2)))
  assert 'select_and_scatter' not in shipped_ops and 'reduce_window' not in shipped_ops
  assert 'select_and_scatter' in flax_ops or 'reduce_window' in flax_ops  # the check can fail
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-9, atol=1e-12 * float(jnp.abs(v).max())),
               shipped, flax_pool)


def leaf(params, path):
  for key in path:
    params = params[key]
  return np.asarray(params)


def uniform_std(fan_in):
  """The std of U(+-1/sqrt(fan_in)): PyTorch's default for conv and Linear kernels (kaiming_uniform_(a=sqrt(5)))."""
  return 1 / np.sqrt(3 * fan_in)


def assert_torch_default(kernel, bias, fan_in):
  bound = 1 / np.sqrt(fan_in)
  assert kernel.std() == pytest.approx(uniform_std(fan_in), rel=0.03)
  assert np.abs(kernel).max() <= bound
  if bias is not None:
    assert np.abs(bias).max() <= bound and np.abs(bias).max() > 0.5 * bound  # uniform, not zero


@pytest.mark.slow
def test_vgg_convs_are_he_normal_fan_out_with_zero_bias_and_the_classifier_torch_default():
  _, variables = init('vgg16')
  params = variables['params']
  # Conv_2: 3x3, 64 -> 128: fan-out 9 * 128.
  assert leaf(params, ['Conv_2', 'kernel']).std() == pytest.approx(np.sqrt(2 / (9 * 128)), rel=0.03)
  assert not leaf(params, ['Conv_2', 'bias']).any()
  assert_torch_default(leaf(params, ['Dense_0', 'kernel']), leaf(params, ['Dense_0', 'bias']), 512)


@pytest.mark.slow
def test_vgg_imagenet_classifier_is_torchvisions_normal_0_01_with_zero_bias():
  model = get_model('vgg11', 10, imagenet_head=True, width=0.125)
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)['params']
  assert leaf(params, ['Dense_1', 'kernel']).std() == pytest.approx(0.01, rel=0.03)
  assert not leaf(params, ['Dense_1', 'bias']).any() and not leaf(params, ['Dense_2', 'bias']).any()


@pytest.mark.slow
def test_batchnorm_starts_at_scale_one_and_bias_zero():
  for name, kwargs in (('vgg11', {'width': 0.125}), ('resnet20', {}), ('resnet18', {'small_input': True})):
    _, variables = init(name, **kwargs)
    norms = {jax.tree_util.keystr(path): np.asarray(value)
             for path, value in jax.tree_util.tree_leaves_with_path(variables['params'])
             if 'BatchNorm' in jax.tree_util.keystr(path)}
    assert norms
    for key, value in norms.items():
      np.testing.assert_array_equal(value, 1.0 if key.endswith("['scale']") else 0.0, err_msg=f'{name} {key}')


@pytest.mark.parametrize('name', sorted(MODELS))
def test_every_batchnorm_of_the_zoo_uses_two_pass_variance_as_pytorch(name):
  model = get_model(name, 10, **({'small_input': True} if name in TORCHVISION_RESNETS else {}))
  seen = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm):
      seen.append(context.module.use_fast_variance)
    return next_fun(*args, **kwargs)

  x = jnp.ones((2, 28, 28, 1))
  with nn.intercept_methods(record):
    jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=True))
  assert not any(seen), f'{name}: {sum(seen)} of {len(seen)} BatchNorms use E[x^2] - E[x]^2'


def test_zoo_batchnorm_normalises_a_large_offset_in_float32_as_float64_does():
  x = 1e4 + jax.random.normal(jax.random.key(0), (64, 4), jnp.float32)  # float32: E[x^2] - E[x]^2 cancels catastrophically
  exact = (np.asarray(x, np.float64) - np.asarray(x, np.float64).mean(0)) / np.asarray(x, np.float64).std(0)
  norm = batch_norm.batch_norm(train=True)
  out, _ = norm.apply(norm.init(jax.random.key(0), x), x, mutable=['batch_stats'])
  np.testing.assert_allclose(out, exact, atol=2e-3)


@pytest.mark.slow
def test_resnet20_convs_and_classifier_are_he_normal_fan_in_with_a_torch_default_bias():
  _, variables = init('resnet20')
  params = variables['params']
  # stage-3 conv: 3x3, 64 -> 64: fan-in 9 * 64; the Dense: fan-in 64.
  assert leaf(params, ['OptionABlock_8', 'Conv_1', 'kernel']).std() == pytest.approx(np.sqrt(2 / (9 * 64)), rel=0.03)
  kernel = leaf(params, ['Dense_0', 'kernel'])
  assert kernel.std() == pytest.approx(np.sqrt(2 / 64), rel=0.1)  # 640 samples: a looser tolerance
  assert np.abs(leaf(params, ['Dense_0', 'bias'])).max() <= 1 / 8


@pytest.mark.slow
def test_resnet18_and_50_convs_keep_pytorchs_default_init_as_in_the_authors_code():
  _, variables = init('resnet18', small_input=True)
  params = variables['params']
  assert_torch_default(leaf(params, ['Conv_0', 'kernel']), None, 9 * 3)              # the 3x3 CIFAR stem
  assert_torch_default(leaf(params, ['BasicBlock_4', 'Conv_1', 'kernel']), None, 9 * 256)
  assert_torch_default(leaf(params, ['Dense_0', 'kernel']), leaf(params, ['Dense_0', 'bias']), 512)
  model = get_model('resnet50', 1000)
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)['params']
  assert_torch_default(leaf(params, ['Conv_0', 'kernel']), None, 49 * 3)             # the 7x7 ImageNet stem
  assert_torch_default(leaf(params, ['Bottleneck_7', 'Conv_1', 'kernel']), None, 9 * 256)  # stage 3, 3x3


@pytest.mark.slow
def test_resnet_torchvision_init_is_he_normal_fan_out():
  _, variables = init('resnet18', small_input=True, conv_init='torchvision')
  kernel = leaf(variables['params'], ['BasicBlock_4', 'Conv_1', 'kernel'])  # 3x3, 256 -> 256
  assert kernel.std() == pytest.approx(np.sqrt(2 / (9 * 256)), rel=0.03)
  with pytest.raises(ValueError, match="unknown ResNet conv_init 'kaiming'; valid: torch_default, torchvision"):
    init('resnet18', small_input=True, conv_init='kaiming')


@pytest.mark.slow
def test_lenets_use_pytorchs_default_init_for_every_kernel_and_bias():
  _, variables = init('lenet5', 28, 1)
  params = variables['params']
  assert_torch_default(leaf(params, ['Conv_1', 'kernel']), leaf(params, ['Conv_1', 'bias']), 25 * 20)
  assert_torch_default(leaf(params, ['Dense_0', 'kernel']), leaf(params, ['Dense_0', 'bias']), 800)
  _, variables = init('lenet300_100', 28, 1)
  params = variables['params']
  assert_torch_default(leaf(params, ['Dense_0', 'kernel']), leaf(params, ['Dense_0', 'bias']), 784)
  assert_torch_default(leaf(params, ['Dense_1', 'kernel']), leaf(params, ['Dense_1', 'bias']), 300)


def test_lenet5_layer_shapes_are_caffes():
  _, variables = init('lenet5', 28, 1)
  shapes = {k: v['kernel'].shape for k, v in variables['params'].items()}
  assert shapes == {'Conv_0': (5, 5, 1, 20), 'Conv_1': (5, 5, 20, 50), 'Dense_0': (800, 500), 'Dense_1': (500, 10)}


def test_unknown_model_lists_the_valid_names():
  with pytest.raises(ValueError, match='unknown model .vgg17.*resnet20.*vgg16'):
    get_model('vgg17', 10)
