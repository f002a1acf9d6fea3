"""ResNet-20 at half width (8-16-32 channels) on Fashion-MNIST, the Fashion-MNIST recipe: the numerics study's network.

The study (docs/numerics.md) asks whether the rounding that moves exact ProsPr's M = 3 masks on BatchNorm networks
moves their accuracy. It needs a BatchNorm network with ResNet-20's depth and shortcuts that this project's 2-core
CPU trains 30 times over; half the channels is about a quarter of the arithmetic, and at the recipe's pruning batch
of 256 its float32 and float64 masks share as many kept weights as the full network's do (90-93%,
benchmarks/results/score_stability_width_batch.json).

  python sweep.py --config configs/fashion_mnist_resnet20_half.py:4 --criteria=prospr,snip \
    --sparsities=0.9,0.981986 --seeds=3 --config.prune.precision=float64
"""

from configs import fashion_mnist_recipe


def get_config(variant: str = ''):
  config = fashion_mnist_recipe.get_config(variant)
  config.model = 'resnet20'
  config.model_kwargs.width = 8  # the first stage's channels (16 in ResNet-20)
  return config
