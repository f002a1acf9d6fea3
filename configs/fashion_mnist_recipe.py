"""Fashion-MNIST recipe for the 28x28 networks, shared by every criterion: the offline benchmark.

Fashion-MNIST comes from ``apt-get install dataset-fashion-mnist`` (IDX files in
/usr/share/datasets/fashion-mnist/; ``config.data_dir`` points elsewhere).
SGD lr 0.1, momentum 0.9, weight decay 5e-4, batch 128 (SNIP's LeNet recipe,
shortened); lr x0.1 at 1/2 and 3/4 of training; no augmentation; pruning with
M = 3 inner steps on batches of 256.

The variant sets the length: ``get_config('10')`` trains 10 epochs with the lr
steps at epochs 5 and 7 (``--config=configs/fashion_mnist_lenet5.py:10``);
``'runlocal'`` is a one-epoch smoke test. ``--config.num_epochs`` alone keeps
the default milestones (10, 15), refused below 16 epochs: use the variant, or set
``--config.lr_milestones`` with it.
"""

from configs import default

NUM_EPOCHS = 20


def milestones(num_epochs: int) -> tuple[int, ...]:
  """The epochs at which the learning rate drops: halfway and three quarters of the way (none in epoch 0)."""
  return tuple(sorted({e for e in (num_epochs // 2, num_epochs * 3 // 4) if e > 0}))


def get_config(variant: str = ''):
  config = default.get_config()
  config.dataset = 'fashion_mnist'
  config.prune.sparsity = 0.9
  config.prune.num_steps = 3
  config.prune.batch_size = 256
  config.prune.inner_lr = 0.1
  config.batch_size = 128
  config.eval_batch_size = 1000
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.weight_decay = 5e-4
  config.lr_decay = 0.1
  config.worker_count = 0  # records are in memory; worker processes cost more than they save
  config.checkpoint_every_steps = 0
  if variant == 'runlocal':
    config.prune.batch_size = 32
    num_epochs = 1
  elif variant.isdigit():
    num_epochs = int(variant)
  elif variant:
    raise ValueError(f"unknown config variant {variant!r}; valid: '', 'runlocal' or a number of epochs")
  else:
    num_epochs = NUM_EPOCHS
  config.num_epochs = num_epochs
  config.lr_milestones = milestones(num_epochs)
  return config
