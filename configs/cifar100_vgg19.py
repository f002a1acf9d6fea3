"""VGG-19 on CIFAR-100, structured ProsPr (one mask entry per channel), the paper's recipe.

  python prune.py --config configs/cifar100_vgg19.py --config.prune.sparsity=0.9

Paper (Table 2): ProsPr 72.29 +- 0.11 % top-1 at 80% channel sparsity, 71.12 +- 0.26 % at 90%,
68.03 +- 0.38 % at 95%; the dense network 72.5 %.
"""

from configs import cifar_recipe


def get_config(variant: str = ''):
  config = cifar_recipe.get_config(variant)
  config.dataset = 'cifar100'
  config.model = 'vgg19'
  config.prune.structured = True
  config.prune.keep_one_per_layer = True
  return config
