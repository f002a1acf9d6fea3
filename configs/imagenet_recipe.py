"""The paper's ImageNet recipe (appendix A.2), shared by the ImageNet configs.

100 epochs, SGD lr 0.1 momentum 0.9, lr x0.1 at epochs 30, 60 and 90, weight
decay 1e-4, batch 256, random resized crop 224 + flip; first-order ProsPr over
a stream of batches.
"""

from configs import default


def get_config(variant: str = ''):
  config = default.get_config()
  config.dataset = 'imagenet2012'
  config.prune.first_order = True
  config.prune.streamed = True
  config.prune.inner_lr = 0.1
  config.num_epochs = 100
  config.batch_size = 256
  config.eval_batch_size = 256
  config.learning_rate = 0.1
  config.weight_decay = 1e-4
  config.lr_milestones = (30, 60, 90)
  config.compare_dense = False
  config.worker_count = 16
  config.checkpoint_every_steps = 2000
  if variant == 'runlocal':
    config.prune.num_steps = 2
    config.prune.batch_size = 4
    config.num_epochs = 1
    config.lr_milestones = ()  # the recipe's drops scaled to one epoch fall inside it: none
    config.batch_size = 4
    config.eval_batch_size = 4
    config.worker_count = 0
    config.checkpoint_every_steps = 0
  elif variant:
    raise ValueError(f"unknown config variant {variant!r}; valid: '' or 'runlocal'")
  return config
