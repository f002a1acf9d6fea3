"""ResNet-20 on Fashion-MNIST (one input channel, 28x28 -> 14 -> 7), ProsPr (exact, M = 3), the Fashion-MNIST recipe.

  python prune.py --config configs/fashion_mnist_resnet20.py --config.prune.sparsity=0.98
  python prune.py --config configs/fashion_mnist_resnet20.py:10 --config.criterion=snip   # 10 epochs
  python prune.py --config configs/fashion_mnist_resnet20.py:runlocal                     # one epoch
"""

from configs import fashion_mnist_recipe


def get_config(variant: str = ''):
  config = fashion_mnist_recipe.get_config(variant)
  config.model = 'resnet20'
  return config
