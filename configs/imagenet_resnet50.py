"""ResNet-50 on ImageNet, first-order ProsPr streamed over 1024 steps of batch 256.

Needs imagenet2012 prepared as array_record (docs/experiments.md, Data).

  python prune.py --config configs/imagenet_resnet50.py --config.prune.sparsity=0.9

Paper (Table 1): ProsPr 66.86 % top-1 / 87.88 % top-5 at 90% sparsity, 59.62 / 82.82 at 95%; dense 75.6 / 92.8.
"""

from configs import imagenet_recipe


def get_config(variant: str = ''):
  config = imagenet_recipe.get_config(variant)
  config.model = 'resnet50'
  if variant != 'runlocal':
    config.prune.num_steps = 1024
    config.prune.batch_size = 256
  return config
