"""Does a pruned network still compute with its input? Layer collapse, told apart from an emptied layer that a
residual shortcut bypasses.

A global top-k mask that removes every weight of a layer is refused by ``topk.global_topk_mask``. In a chain
(an MLP, VGG) that is layer collapse: no path from the input to the output is left, the network outputs the same
logits for every input, and its accuracy is that of a constant prediction whatever the training. In a residual
network a shortcut bypasses each block's convolutions: emptying one of them silences that branch, not the network,
which still trains and must be measured. This module tells the two apart.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
from chex import ArrayTree

from prospr_jax import losses, masks as masks_lib, topk

log = logging.getLogger(__name__)


def output_depends_on_input(model, variables: ArrayTree, masks: ArrayTree, input_shape: tuple[int, ...],
                            batch: int = 8) -> bool:
  """Whether the masked network's logits change with its input, in train mode (BatchNorm on batch statistics, as
  the network trains).

  The gradient of a random projection of the logits with respect to random inputs: a zero kernel passes back exact
  zeros, so an emptied layer on every path makes it exactly zero for any inputs and any values of the other
  weights; with a path left it is nonzero. Train mode matters: BatchNorm centres every channel on the batch, so a
  kept channel cannot be dead for the whole batch, which it can be at initialization in eval mode (the initial
  running statistics leave a negative pre-activation negative for every input).
  """
  key_x, key_r, key_dropout = jax.random.split(jax.random.key(0), 3)
  projected = lambda logits, _: jnp.vdot(logits, jax.random.normal(key_r, logits.shape, logits.dtype))
  loss_fn = losses.flax_loss_fn(model, variables, loss=projected, rngs={'dropout': key_dropout})
  params = masks_lib.apply_mask(variables['params'], masks)
  inputs = jax.random.normal(key_x, (batch, *input_shape), jnp.float32)
  labels = jnp.zeros((batch,), jnp.int32)
  gradient = jax.grad(lambda x: loss_fn(params, (x, labels)))(inputs)
  return bool(jnp.any(gradient != 0))


def mask_or_collapse(error: topk.LayerCollapseError, model, variables: ArrayTree,
                     input_shape: tuple[int, ...]) -> ArrayTree:
  """The mask ``error`` refused, when the network still computes with its input (a shortcut bypasses every
  emptied layer); otherwise ``error`` again, saying that no path is left (layer collapse)."""
  if error.mask is None or not output_depends_on_input(model, variables, error.mask, input_shape):
    raise topk.LayerCollapseError(f'{error} No path from the input to the output is left: the network outputs the '
                                  'same logits for every input (layer collapse).', error.emptied, error.mask) from None
  log.warning('The mask removes every weight of %s; a shortcut bypasses %s, so the network still computes with '
              'its input: training it', ', '.join(error.emptied), 'it' if len(error.emptied) == 1 else 'them')
  return error.mask
