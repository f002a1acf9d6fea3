"""prospr_jax: Prospect Pruning (ProsPr) and pruning at initialization in JAX.

The core (``criteria``, ``masks``) works on any params pytree and any
``loss_fn(params, batch) -> scalar``::

  scores = prospr_jax.prospr_saliency(params, batches, loss_fn=loss_fn)
  masks = prospr_jax.global_topk_mask(scores, sparsity=0.9)
  params = prospr_jax.apply_mask(params, masks)
"""

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
)
from prospr_jax.distributions import DISTRIBUTIONS, make_mask
from prospr_jax.losses import flax_apply_fn, flax_loss_fn, softmax_cross_entropy
from prospr_jax.masks import (
    all_ones_mask,
    apply_mask,
    default_prunable,
    global_topk_mask,
    layerwise_topk_mask,
    load_masks,
    ones_mask,
    save_masks,
)
from prospr_jax.sparsity import SparsityReport, sparsity_report

__version__ = '0.1.0'
