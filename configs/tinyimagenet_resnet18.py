"""ResNet-18 (CIFAR patch: 3x3 stem, no max-pool) on Tiny-ImageNet, ProsPr (exact, M = 3).

Needs tiny-imagenet-200/ under config.data_dir (docs/experiments.md, Data).

  python prune.py --config configs/tinyimagenet_resnet18.py --config.data_dir=/data --config.prune.sparsity=0.9

Paper (Table 5): ProsPr 50.7 +- 0.6 % top-1 at 89.3% sparsity, 50.8 +- 0.5 % at 95.6%, 46.9 +- 0.7 % at 98.2%.
"""

from configs import cifar_recipe


def get_config(variant: str = ''):
  config = cifar_recipe.get_config(variant)
  config.dataset = 'tiny_imagenet'
  config.model = 'resnet18'
  config.model_kwargs.small_input = True
  return config
