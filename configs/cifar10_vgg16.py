"""VGG-16 on CIFAR-10, ProsPr (exact, M = 3), the paper's recipe (appendix A.2).

  python prune.py --config configs/cifar10_vgg16.py --config.prune.sparsity=0.9
  python prune.py --config configs/cifar10_vgg16.py:runlocal   # a few steps on small batches

Paper (Table 4): ProsPr 93.3 +- 0.1 % top-1 at 89.3% sparsity, 92.7 +- 0.1 % at 95.6%, 91.6 +- 0.4 % at 98.2%;
the dense network about 93.5 %.
"""

from configs import cifar_recipe


def get_config(variant: str = ''):
  config = cifar_recipe.get_config(variant)
  config.dataset = 'cifar10'
  config.model = 'vgg16'
  return config
