"""VGG-19 (BatchNorm, ImageNet head) on ImageNet, first-order ProsPr streamed over 256 steps of batch 128.

Appendix A.2 says 2048 steps, section 4.2 says 256 steps of batch 128; we follow section 4.2 (and issue #6).
The model is the authors' layer list (four max-pools; the 14x14 map average-pooled to 7x7) with torchvision's
classifier and init; its weights are vgg19_bn's (143,678,248 parameters).

  python prune.py --config configs/imagenet_vgg19.py --config.prune.sparsity=0.9

Paper (Table 1): ProsPr 70.75 % top-1 / 89.9 % top-5 at 90% sparsity, 66.1 / 87.2 at 95%; dense 73.1 / 91.3.
"""

from configs import imagenet_recipe


def get_config(variant: str = ''):
  config = imagenet_recipe.get_config(variant)
  config.model = 'vgg19'
  config.model_kwargs.imagenet_head = True
  if variant != 'runlocal':
    config.prune.num_steps = 256
    config.prune.batch_size = 128
  return config
