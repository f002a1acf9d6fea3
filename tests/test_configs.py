"""Experiment configs: the recipes' numbers and the variants that resize them."""

import importlib
import inspect
import pathlib

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


def test_a_learning_rate_drop_after_the_last_epoch_is_refused_in_one_line_naming_both_values_and_the_fix():
  from prospr_jax.harness import validation
  config = fashion_mnist_recipe.get_config()
  config.num_epochs = 1  # as --config.num_epochs=1 alone: the milestones stay at epochs 10 and 15
  with pytest.raises(validation.ConfigError) as refusal:
    validation.validate_config(config)
  message = str(refusal.value)
  assert '\n' not in message and 'config.lr_milestones=(10, 15)' in message and 'config.num_epochs=1' in message
  assert "'--config.lr_milestones=()'" in message
  config.num_epochs = 10  # a drop after the last epoch would never happen either
  with pytest.raises(validation.ConfigError, match=r'after epoch 10, 15, but training stops after .*num_epochs=10'):
    validation.validate_config(config)
  config.lr_milestones = (5, 7)
  validation.validate_config(config)
  config.num_epochs = 0  # stops after pruning: nothing trains, no milestone matters
  config.lr_milestones = (10, 15)
  validation.validate_config(config)


CONFIGS = sorted(path.stem for path in (pathlib.Path(__file__).parents[1] / 'configs').glob('*.py')
                 if path.stem != '__init__')


@pytest.mark.parametrize('module', CONFIGS)
def test_every_config_and_its_runlocal_variant_drop_the_learning_rate_within_training(module):
  from prospr_jax.harness import validation
  get_config = importlib.import_module(f'configs.{module}').get_config
  variants = [''] + (['runlocal'] if inspect.signature(get_config).parameters else [])
  for config in (get_config(*([variant] if variant else [])) for variant in variants):
    validation.check_milestones(config.lr_milestones, config.num_epochs)
