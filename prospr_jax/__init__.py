"""prospr_jax: Prospect PruneSpec (ProsPr) and pruning at initialization in JAX.

The core (``criteria``, ``masks``) works on any params pytree and any
``loss_fn(params, batch) -> scalar``::

  scores = prospr_jax.prospr_saliency(params, batches, loss_fn=loss_fn)
  masks = prospr_jax.global_topk_mask(scores, sparsity=0.9)
  params = prospr_jax.apply_mask(params, masks)
"""

from prospr_jax.channels.groups import ChannelGroup, ChannelPlan
from prospr_jax.channels.scores import score_channels
from prospr_jax.criteria import (
  CRITERIA,
  ITERATIVE,
  force_saliency,
  get_criterion,
  grasp_saliency,
  iterative_snip_saliency,
  magnitude_saliency,
  prospr_meta_gradient,
  prospr_saliency,
  prospr_saliency_streamed,
  random_saliency,
  snip_saliency,
  synflow_saliency,
  three_sp_saliency,
)
from prospr_jax.distributions import DISTRIBUTIONS, make_mask
from prospr_jax.losses import flax_apply_fn, flax_loss_fn, softmax_cross_entropy
from prospr_jax.mask_files import load_masks, save_masks
from prospr_jax.masked_optax import masked_optimizer
from prospr_jax.masks import all_ones_mask, apply_mask, default_prunable, ones_mask
from prospr_jax.sparsity import SparsityReport, sparsity_report
from prospr_jax.topk import global_topk_mask, layerwise_topk_mask
from prospr_jax.xla_cpu.host_memory import release_heap_after_compiles

from prospr_jax import _moved

__version__ = '0.1.0'
_moved.install()

_LAZY_FLAX_NAMES = {'compact': 'prospr_jax.models.compaction', 'load_compact': 'prospr_jax.models.compaction',
              'channel_plan': 'prospr_jax.models.plans', 'output_positions': 'prospr_jax.models.flops',
              'layer_flops': 'prospr_jax.models.flops', 'export': 'prospr_jax.harness.export',
              'load_exported': 'prospr_jax.harness.export_formats'}


def __getattr__(name: str):
  """Compaction, the zoo's channel plans and export import Flax: loaded on first use, so the core never needs it."""
  if name in _LAZY_FLAX_NAMES:
    import importlib
    return getattr(importlib.import_module(_LAZY_FLAX_NAMES[name]), name)
  raise AttributeError(f'module prospr_jax has no attribute {name!r}')
