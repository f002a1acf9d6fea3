"""VGG-16 on Fashion-MNIST, ProsPr (exact, M = 3), the Fashion-MNIST recipe.

Four max-pools take 28x28 to 14, 7, 3 and 1 pixel; the head averages that 1x1 map.

  python prune.py --config configs/fashion_mnist_vgg16.py --config.prune.sparsity=0.98
  python prune.py --config configs/fashion_mnist_vgg16.py:10 --config.criterion=snip   # 10 epochs
  python prune.py --config configs/fashion_mnist_vgg16.py:runlocal                     # one epoch
"""

from configs import fashion_mnist_recipe


def get_config(variant: str = ''):
  config = fashion_mnist_recipe.get_config(variant)
  config.model = 'vgg16'
  return config
