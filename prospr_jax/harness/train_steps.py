"""Training the pruned network: a TrainState that carries the mask, jitted train and eval steps.

The forward pass sees ``params * mask`` and params are multiplied by the mask
again after every update, so pruned weights are exactly zero in every step,
checkpoint and export, whatever momentum and weight decay do.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from chex import ArrayTree

from prospr_jax import masks as masks_lib
from prospr_jax.data import resident
from prospr_jax.losses import softmax_cross_entropy


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: ArrayTree
  batch_stats: ArrayTree
  opt_state: optax.OptState
  mask: ArrayTree  # mirrors params; None on unmasked leaves
  rng: jax.Array  # dropout, folded with the step


def lr_schedule(base_lr: float, steps_per_epoch: int, milestones: Sequence[int], factor: float = 0.1):
  """Multi-step decay: ``base_lr`` times ``factor`` at each milestone epoch (paper appendix A.2)."""
  return optax.piecewise_constant_schedule(base_lr, {int(e * steps_per_epoch): factor for e in milestones})


def make_optimizer(*, learning_rate, momentum: float, weight_decay: float) -> optax.GradientTransformation:
  """torch.optim.SGD: weight decay added to the gradient, then the momentum buffer."""
  return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum=momentum or None))


def create_train_state(variables: ArrayTree, mask: ArrayTree, optimizer: optax.GradientTransformation,
                       rng: jax.Array) -> TrainState:
  params = masks_lib.apply_mask(variables['params'], mask)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get('batch_stats', {}),
                    opt_state=optimizer.init(params), mask=mask, rng=rng)


def start_at(state: TrainState, step: int) -> TrainState:
  """``state`` moved to ``step``: its step and the optimizer's step count (the learning-rate schedule's) set to it."""
  count = jnp.asarray(step, jnp.int32)
  return state.replace(step=count, opt_state=optax.tree_utils.tree_set(state.opt_state, count=count))


def _apply(model: nn.Module, state: TrainState, params: ArrayTree, images: jax.Array, train: bool):
  variables = {'params': masks_lib.apply_mask(params, state.mask), 'batch_stats': state.batch_stats}
  if not train:
    return model.apply(variables, images, train=False), state.batch_stats
  logits, updates = model.apply(variables, images, train=True, mutable=['batch_stats'],
                                rngs={'dropout': jax.random.fold_in(state.rng, state.step)})
  return logits, updates.get('batch_stats', {})


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module,
               optimizer: optax.GradientTransformation) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on the masked network; returns the new state and the batch's loss and accuracy."""
  def loss_fn(params):
    logits, batch_stats = _apply(model, state, params, batch['image'], train=True)
    return softmax_cross_entropy(logits, batch['label']), (logits, batch_stats)

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = masks_lib.apply_mask(optax.apply_updates(state.params, updates), state.mask)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
  return new_state, {'loss': loss, 'accuracy': accuracy}


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module) -> dict[str, jax.Array]:
  """Sums over the batch, padding weighted out: loss, top-1 and top-5 correct, count."""
  logits, _ = _apply(model, state, state.params, batch['image'], train=False)
  weight = batch['weight']
  labels = batch['label']
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  k = min(5, logits.shape[-1])
  top_k = jax.lax.top_k(logits, k)[1]
  return {'loss': jnp.sum(losses * weight),
          'top1': jnp.sum((top_k[:, 0] == labels) * weight),
          'top5': jnp.sum(jnp.any(top_k == labels[:, None], axis=-1) * weight),
          'count': jnp.sum(weight)}


def summarize_eval(sums: list[dict[str, jax.Array]]) -> dict[str, float]:
  total = {key: float(sum(s[key] for s in sums)) for key in sums[0]}
  count = max(total['count'], 1.0)
  return {'eval_loss': total['loss'] / count, 'eval_top1': total['top1'] / count, 'eval_top5': total['top5'] / count}


def train_chunk(state: TrainState, arrays: dict[str, jax.Array], order: jax.Array, data_key: jax.Array,
                start: jax.Array, *,
                length: int, spec: resident.Layout, batch_sharding: jax.sharding.Sharding, model: nn.Module,
                optimizer: optax.GradientTransformation) -> tuple[TrainState, dict[str, jax.Array]]:
  """``length`` train steps from step ``start`` in one program (a scan), on batches of a device-resident set.

  The steps must lie in one epoch, whose record order is ``order`` (``resident.epoch_order``). Returns the state
  after them and each step's loss and accuracy (leading axis ``length``).
  """
  def body(state, step):
    batch = jax.lax.with_sharding_constraint(resident.train_batch(arrays, order, data_key, step, spec),
                                             batch_sharding)
    return train_step(state, batch, model=model, optimizer=optimizer)

  return jax.lax.scan(body, state, start + jnp.arange(length, dtype=jnp.int32))


def eval_resident(state: TrainState, arrays: dict[str, jax.Array], *, spec: resident.Layout,
                  batch_sharding: jax.sharding.Sharding, model: nn.Module) -> dict[str, jax.Array]:
  """``eval_step``'s sums over a whole device-resident evaluation set, in one program."""
  def body(sums, index):
    batch = jax.lax.with_sharding_constraint(resident.eval_batch(arrays, index, spec), batch_sharding)
    return jax.tree.map(jnp.add, sums, eval_step(state, batch, model=model)), None

  zeros = {key: jnp.zeros((), jnp.float32) for key in ('loss', 'top1', 'top5', 'count')}
  return jax.lax.scan(body, zeros, jnp.arange(-(-spec.num_records // spec.batch_size)))[0]
