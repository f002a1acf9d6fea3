"""LeNet-300-100 (MLP 784-300-100-10) on Fashion-MNIST, ProsPr (exact, M = 3), the Fashion-MNIST recipe.

  python prune.py --config configs/fashion_mnist_lenet300.py --config.prune.sparsity=0.98
  python prune.py --config configs/fashion_mnist_lenet300.py:10 --config.criterion=snip   # 10 epochs
  python prune.py --config configs/fashion_mnist_lenet300.py:runlocal                     # one epoch
"""

from configs import fashion_mnist_recipe


def get_config(variant: str = ''):
  config = fashion_mnist_recipe.get_config(variant)
  config.model = 'lenet300_100'
  return config
