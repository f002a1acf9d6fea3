"""What every criterion shares: checking its inputs, the mask variables, and normalised scores."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from chex import ArrayTree

from prospr_jax import losses, masks as masks_lib, topk
from prospr_jax.criteria import structured as structured_lib

LossFn = Callable[[ArrayTree, Any], jax.Array]


def num_batches(batches: ArrayTree) -> int:
  """The common leading size of every leaf of ``batches`` (M + 1 for ProsPr)."""
  leaves = jax.tree_util.tree_leaves_with_path(batches)
  if not leaves:
    raise ValueError('batches is empty: pass a pytree of arrays with a leading axis of M + 1 batches')
  sizes = {masks_lib.layer_name(path) or 'batches': (jnp.shape(x)[0] if jnp.ndim(x) else None)
           for path, x in leaves}
  if None in sizes.values() or len(set(sizes.values())) != 1:
    raise ValueError(
        'every leaf of batches needs the same leading axis, one entry per batch (M inner steps + 1 for the '
        f'meta-loss), e.g. x of shape [M+1, B, ...] and y of shape [M+1, B]; got leading sizes {sizes}. '
        'Stack the batches with jnp.stack, or add the axis to one batch with x[None].')
  if any(jnp.ndim(x) == 1 for _, x in leaves):
    raise ValueError(
        'a leaf of batches has only the leading axis, so each batch would hold a scalar: this looks like one '
        'batch instead of M+1 stacked ones (labels of shape [B] instead of [M+1, B]). Stack M+1 batches '
        'with jnp.stack, or use x[None], y[None] for M = 0; give a true per-batch scalar the shape [M+1, 1].')
  size = next(iter(sizes.values()))
  if size < 1:
    raise ValueError('batches has a leading axis of size 0: pass at least one batch')
  return size


def batch_at(batches: ArrayTree, index: int) -> ArrayTree:
  return jax.tree.map(lambda x: x[index], batches)


def check_loss_fn(loss_fn: LossFn, params: ArrayTree, batch: ArrayTree) -> None:
  """Trace ``loss_fn(params, batch)`` once: it must run and return a scalar."""
  try:
    out = jax.eval_shape(loss_fn, params, batch)
  except losses.InputError:
    raise
  except Exception as error:
    error.add_note('prospr_jax: this came from loss_fn(params, batches[0]). batches must have a leading axis '
                   'with one entry per batch (M + 1 for ProsPr), each a batch loss_fn accepts.')
    raise
  if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != ():
    shape = getattr(out, 'shape', type(out).__name__)
    raise ValueError(f'loss_fn(params, batch) must return a scalar loss, got {shape}: average over the batch')


def mask_variables(params: ArrayTree, batch: ArrayTree, *, loss_fn: LossFn | None, structured: bool,
                   prunable: masks_lib.Prunable | None) -> ArrayTree:
  """The all-ones mask ``c`` a criterion differentiates; structured mode leaves the classifier out."""
  if structured and prunable is None:
    if loss_fn is None:
      raise ValueError('structured=True without prunable needs loss_fn to find the output layer to leave '
                       'unmasked; pass loss_fn, or prunable=')
    prunable = structured_lib.channel_prunable(loss_fn, params, batch)
  return masks_lib.ones_mask(params, prunable=prunable, structured=structured)


def data_mask_variables(params: ArrayTree, batches: ArrayTree, *, loss_fn: LossFn, structured: bool,
                        prunable: masks_lib.Prunable | None) -> ArrayTree:
  """Check ``batches`` (leading axis) and ``loss_fn`` (a scalar on ``batches[0]``), then build ``c``."""
  num_batches(batches)
  first_batch = batch_at(batches, 0)
  check_loss_fn(loss_fn, params, first_batch)
  return mask_variables(params, first_batch, loss_fn=loss_fn, structured=structured, prunable=prunable)


KERNEL, OUTPUT = 'kernel', 'output'


def channel_gate(where: str) -> Callable[[Callable], Callable]:
  """Declares where a criterion's mask sits when it scores whole channels (``channel_scores.score_channels``).

  ``'output'`` (the default for undeclared criteria): on the channel's output after its normalisation, where
  removing the channel acts; a gate before a train-mode BatchNorm is cancelled by it and scores only its epsilon.
  ``'kernel'``: on the kernels that write the channel (ProsPr's eq. 3 with one entry per channel; magnitude and
  SynFlow read the kernels).
  """
  if where not in (KERNEL, OUTPUT):
    raise ValueError(f'a channel gate sits at {KERNEL!r} or {OUTPUT!r}, got {where!r}')

  def declare(criterion: Callable) -> Callable:
    criterion.channel_gate = where
    return criterion
  return declare


def gate_of(criterion: Callable) -> str:
  """Where ``criterion`` gates a channel: its declaration (``channel_gate``), else ``'output'``."""
  return getattr(criterion, 'channel_gate', OUTPUT)


def is_concrete(tree: ArrayTree) -> bool:
  return not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))


def normalized_scores(gradients: ArrayTree, hint: str = '') -> ArrayTree:
  """``s_j = |g_j| / sum_k |g_k|`` over every masked entry (paper eqs. 1 and 11).

  Outside ``jax.jit`` it raises ValueError naming any layer with NaN or Inf.
  """
  if is_concrete(gradients):
    topk.check_finite_scores(gradients, hint)
  magnitudes = jax.tree.map(jnp.abs, gradients)
  total = sum(jnp.sum(m) for m in jax.tree.leaves(magnitudes))
  return jax.tree.map(lambda m: m / total, magnitudes)
