"""The model zoo: parameter counts pinned to the authors' models, initialisers, registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prospr_jax.models import get_model


def count_params(name, num_classes, image_size, **kwargs):
  model = get_model(name, num_classes, **kwargs)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)),
                                             train=False))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes['params']))


@pytest.mark.parametrize('name, num_classes, image_size, kwargs, expected', [
    ('vgg16', 10, 32, {}, 14_728_266),
    ('resnet20', 10, 32, {}, 269_722),
    ('resnet18', 10, 32, {'small_input': True}, 11_173_962),
    ('resnet50', 1000, 224, {}, 25_557_032),                      # torchvision resnet50
    ('vgg19', 1000, 224, {'imagenet_head': True}, 143_678_248),   # torchvision vgg19_bn
])
def test_parameter_counts_match_the_reference_models(name, num_classes, image_size, kwargs, expected):
  assert count_params(name, num_classes, image_size, **kwargs) == expected


def test_every_model_maps_images_to_logits():
  for name in ('small_cnn', 'vgg11', 'resnet20', 'resnet18'):
    model = get_model(name, 7, **({'small_input': True} if name == 'resnet18' else {}))
    x = jnp.ones((2, 32, 32, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    assert model.apply(variables, x, train=False).shape == (2, 7)


def kernel_std(name, layer_path, **kwargs):
  model = get_model(name, 10, **kwargs)
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)['params']
  for key in layer_path:
    params = params[key]
  return float(jnp.std(params['kernel']))


def test_vgg_convs_are_he_normal_fan_out_and_resnet20_convs_he_normal_fan_in():
  # VGG-16 Conv_2: 3x3, 64 -> 128: fan-out 9 * 128. ResNet-20 stage-3 conv: 3x3, 64 -> 64: fan-in 9 * 64.
  assert kernel_std('vgg16', ['Conv_2']) == pytest.approx(np.sqrt(2 / (9 * 128)), rel=0.03)
  assert kernel_std('resnet20', ['OptionABlock_8', 'Conv_1']) == pytest.approx(np.sqrt(2 / (9 * 64)), rel=0.03)


def test_unknown_model_lists_the_valid_names():
  with pytest.raises(ValueError, match='unknown model .vgg17.*resnet20.*vgg16'):
    get_model('vgg17', 10)
