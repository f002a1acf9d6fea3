"""Experiment configs: the recipes' numbers and the variants that resize them."""

import importlib

import pytest

from configs import cifar_recipe, fashion_mnist_recipe

FASHION_MNIST = {'fashion_mnist_lenet300': 'lenet300_100', 'fashion_mnist_lenet5': 'lenet5',
                 'fashion_mnist_resnet20': 'resnet20', 'fashion_mnist_vgg16': 'vgg16'}


def test_cifar_prunes_with_three_steps_of_512_as_in_section_4_1():
  config = cifar_recipe.get_config()
  assert (config.prune.num_steps, config.prune.batch_size, config.batch_size) == (3, 512, 256)
  assert cifar_recipe.get_config('runlocal').prune.batch_size == 8


@pytest.mark.parametrize('module, model', sorted(FASHION_MNIST.items()))
def test_fashion_mnist_configs_share_one_recipe(module, model):
  config = importlib.import_module(f'configs.{module}').get_config()
  assert (config.dataset, config.model, config.batch_size, config.learning_rate) == ('fashion_mnist', model, 128, 0.1)
  assert (config.num_epochs, config.lr_milestones) == (20, (10, 15))


def test_a_number_variant_sets_the_epochs_and_moves_the_lr_steps_with_them():
  assert fashion_mnist_recipe.get_config('10').lr_milestones == (5, 7)
  assert fashion_mnist_recipe.get_config('1').lr_milestones == ()
  assert fashion_mnist_recipe.get_config('runlocal').num_epochs == 1
  with pytest.raises(ValueError, match="unknown config variant 'fast'"):
    fashion_mnist_recipe.get_config('fast')
