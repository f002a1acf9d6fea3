"""A mask for any optax training loop: pruned weights stay exactly zero, whatever the optimizer does.

``masked_optimizer(optimizer, masks)`` zeroes the gradients of pruned weights
before ``optimizer`` sees them (so momentum and Adam's moments never build up
there), then makes the update of a pruned weight ``-param``, so
``optax.apply_updates`` leaves it at exactly ``0.0`` after every step, weight
decay included. Kept weights get ``optimizer``'s update unchanged. Its state is
``optimizer``'s own, so checkpoints have the plain optimizer's structure.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from chex import ArrayTree

from prospr_jax import masks as masks_lib


def _where_kept(mask: Any, kept: jax.Array, pruned: jax.Array) -> jax.Array:
  """``kept`` where the mask is 1, ``pruned`` where it is 0; a ``(C_out,)`` mask covers whole output channels."""
  if mask is None:
    return kept
  return jnp.where(jnp.asarray(mask).astype(bool), kept, pruned)


def masked_optimizer(optimizer: optax.GradientTransformation,
                     masks: ArrayTree) -> optax.GradientTransformationExtraArgs:
  """``optimizer`` restricted to the kept weights of ``masks`` (a mask tree from ``global_topk_mask``).

  Use it where the optimizer goes: ``optax.apply_updates(params, updates)``
  with ``params = apply_mask(params, masks)`` at the start keeps pruned weights
  at 0 in every step; ``nnx.Optimizer(model, masked_optimizer(tx, masks),
  wrt=nnx.Param)`` does the same for an NNX model (masks: its scores' pure dict).
  ``update`` needs ``params``.
  """
  optimizer = optax.with_extra_args_support(optimizer)

  def update(updates: ArrayTree, state: optax.OptState, params: ArrayTree | None = None,
             **extra_args: Any) -> tuple[ArrayTree, optax.OptState]:
    if params is None:
      raise ValueError('masked_optimizer needs the params to keep pruned weights at zero: call '
                       'optimizer.update(grads, opt_state, params)')
    leaves = masks_lib.mask_leaves(masks, params)
    grads, treedef = jax.tree.flatten(updates)
    grads = [_where_kept(m, g, jnp.zeros((), g.dtype)) for m, g in zip(leaves, grads)]
    updates, state = optimizer.update(jax.tree.unflatten(treedef, grads), state, params, **extra_args)
    flat, treedef = jax.tree.flatten(updates)
    flat = [_where_kept(m, u, -p.astype(u.dtype)) for m, u, p in zip(leaves, flat, jax.tree.leaves(params))]
    return jax.tree.unflatten(treedef, flat), state

  return optax.GradientTransformationExtraArgs(optimizer.init, update)
