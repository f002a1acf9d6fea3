"""VGG-19 on CIFAR-100, structured ProsPr (one mask entry per channel), the paper's recipe.

Pruned channels are removed: the run trains the compact (narrower) VGG-19 and reports its cost against the dense
one (compaction.json); --config.prune.compact=False trains the masked full-width network instead.

  python prune.py --config configs/cifar100_vgg19.py --config.prune.sparsity=0.9
  python prune.py --config configs/cifar100_vgg19.py --config.criterion=three_sp          # or three_sp_reinit,
  python prune.py --config configs/cifar100_vgg19.py --config.criterion=random            # three_sp_rescale

Paper (Table 2): ProsPr 72.29 +- 0.11 % top-1 at 80% sparsity, 71.12 +- 0.26 % at 90%,
68.03 +- 0.38 % at 95%; the dense network 72.5 %. 3SP 69.9 / 68.3 / 63.2 %, 3SP + reinit 70.3 / 69.0 / 64.2 %,
3SP + rescale 70.5 / 69.2 / 63.5 %, random 67.5 / 63.8 / 60.1 %.

The sparsity counts weights (prune.structured_target='weights': the fewest channels, by score, whose weights keep
1 - sparsity of VGG-19's): removing 95% of the channels would leave 53,326 of its 20M weights, a network that could
not reach 60-68% on CIFAR-100, while Table 2's numbers at "95%" (random 60.1%, ProsPr 68.0%, dense 72.5%) fit 95% of
the weights removed. --config.prune.structured_target=channels counts channels instead.
"""

from configs import cifar_recipe


def get_config(variant: str = ''):
  config = cifar_recipe.get_config(variant)
  config.dataset = 'cifar100'
  config.model = 'vgg19'
  config.prune.structured = True
  config.prune.structured_target = 'weights'
  config.prune.keep_one_per_layer = True
  config.prune.compact = True
  return config
