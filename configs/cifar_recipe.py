"""The paper's CIFAR / Tiny-ImageNet recipe (appendix A.2), shared by the CIFAR and Tiny-ImageNet configs.

SGD lr 0.1, momentum 0.9, weight decay 5e-4, batch 256, 200 epochs, lr x0.1 at
epochs 100 and 150; ProsPr with M = 3 inner steps on batches of 512 (section
4.1). The ``runlocal`` variant shrinks everything for a smoke test on a laptop.
"""

from configs import default


def get_config(variant: str = ''):
  config = default.get_config()
  config.prune.sparsity = 0.9
  config.prune.num_steps = 3
  config.prune.batch_size = 512
  config.prune.inner_lr = 0.1
  config.num_epochs = 200
  config.batch_size = 256
  config.eval_batch_size = 500
  config.learning_rate = 0.1
  config.weight_decay = 5e-4
  config.lr_milestones = (100, 150)
  config.compare_dense = False
  config.worker_count = 4
  config.checkpoint_every_steps = 1000
  if variant == 'runlocal':
    config.prune.num_steps = 1
    config.prune.batch_size = 8
    config.prune.first_order = True
    config.prune.streamed = True
    config.num_epochs = 1
    config.lr_milestones = ()  # the recipe's drops scaled to one epoch fall inside it: none
    config.batch_size = 8
    config.eval_batch_size = 8
    config.worker_count = 0
    config.checkpoint_every_steps = 0
  elif variant:
    raise ValueError(f"unknown config variant {variant!r}; valid: '' or 'runlocal'")
  return config
