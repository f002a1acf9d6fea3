"""ResNet-20 on CIFAR-10, ProsPr (exact, M = 3), the paper's recipe.

  python prune.py --config configs/cifar10_resnet20.py --config.prune.sparsity=0.9

Paper (Table 3): ProsPr 87.8 +- 0.1 % top-1 at 89.3% sparsity, 83.0 +- 0.9 % at 95.6%, 74.2 +- 0.3 % at 98.2%.
"""

from configs import cifar_recipe


def get_config(variant: str = ''):
  config = cifar_recipe.get_config(variant)
  config.dataset = 'cifar10'
  config.model = 'resnet20'
  return config
