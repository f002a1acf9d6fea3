"""The embedded offline default: SmallCNN on scikit-learn's 8x8 `digits`, ProsPr at 90% sparsity.

Real data that ships with scikit-learn, so it runs on a fresh machine with no
network, in about a minute on 2 CPU cores. It prunes with exact ProsPr (M = 3),
trains the pruned network and the dense one from the same initialisation, and
prints a table of both accuracies.

  python prune.py --config configs/default.py
  python prune.py --config configs/default.py --config.criterion=snip --config.prune.sparsity=0.95
  python prune.py --config configs/default.py --config.distribution=erk --config.ablation=shuffle

Every other config starts from this one and overrides what its experiment needs.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.dataset = 'digits'
  config.data_dir = ''  # TFDS data_dir; the parent of tiny-imagenet-200/; the IDX folder of (fashion_)mnist; '' = default
  config.model = 'small_cnn'
  config.model_kwargs = ml_collections.ConfigDict()
  # auto | lax | canonical | im2col (prospr_jax/xla_cpu/conv_impl.py); auto = lax off-CPU. 'auto:<MiB>' or
  # 'im2col:<MiB>': im2col and Winograd layers (CPU) hold at most that many MiB of columns / tiles and rebuild them in
  # the backward pass: less memory (docs/performance.md)
  config.conv_impl = 'auto'

  config.criterion = 'prospr'  # a name from prospr_jax.CRITERIA
  config.distribution = 'global'  # how the budget splits across layers: global, uniform or erk
  config.ablation = 'none'      # Frankle et al. 2021 sanity checks: none, shuffle, reinit or invert
  config.prune = ml_collections.ConfigDict(dict(
      sparsity=0.9,             # fraction of prunable weights removed
      num_steps=3,              # M, the inner steps ProsPr differentiates through
      batch_size=64,            # batch of each of the M + 1 pruning batches
      inner_lr=0.1,
      inner_momentum=0.0,
      first_order=False,
      structured=False,         # one mask entry per channel (a residual channel: one per stream, tied)
      compact=True,             # structured: train the compact (narrower) network, not the masked one
      structured_target='channels',  # structured: sparsity counts channels, or 'weights' (the kept channels' weights)
      streamed=False,           # first-order ProsPr over a stream of batches (long inner loops)
      keep_one_per_layer=False,  # True: never empty a layer; False: refuse a mask that cuts input from output
      rounds=0,                 # iterative criteria (synflow, iterative_snip, force): 0 = their default
      grasp_temperature=200.0,  # GraSP divides logits by this (the authors' value)
      precision='float32',      # scoring arithmetic: float32, float64 (CPU: a reproducible mask) or highest (GPU/TPU)
      conv_impl='',             # the convolution the scoring runs with, as config.conv_impl ('': the same)
      check_stability=False,    # score again (float64 on CPU, highest elsewhere): kept-weight overlap in pruning.json
  ))

  config.num_epochs = 15        # 0: stop after pruning
  config.batch_size = 64
  config.eval_batch_size = 128
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.weight_decay = 5e-4
  config.lr_milestones = (10,)  # epochs at which the learning rate is multiplied by lr_decay
  config.lr_decay = 0.1
  config.seed = 0
  config.worker_count = 0       # grain worker processes per host
  config.checkpoint_every_steps = 0  # also checkpoint mid-epoch (0: only at the end of each epoch)
  config.data_on_device = False  # hold an in-memory set on the device, shuffle and augment there (another data order)
  config.steps_per_dispatch = 1  # data_on_device: train steps per dispatch (a scan); CPU: bit-identical for any value
  config.compare_dense = True   # also train the dense network and print both
  config.deterministic = False  # deterministic GPU kernels (XLA's --xla_gpu_deterministic_ops): slower, reproducible
  config.mask_path = ''         # train.py: train with this mask.npz instead of dense
  return config
