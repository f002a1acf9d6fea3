"""The programs the benchmarks compile: a train step, exact and first-order ProsPr on CIFAR-shaped batches.

``exact`` recomputes each inner step in the backward pass (``jax.checkpoint``, the default); ``exact_stored`` keeps
every inner step's residuals instead, as the authors' PyTorch code does (``checkpoint_steps=False``).
"""

from __future__ import annotations

PROGRAMS = ('train_step', 'exact', 'exact_stored', 'first_order')


def build(name: str, model_name: str, batch_size: int, steps: int, conv_spec: str, *, abstract: bool = False,
          **model_kwargs):
  """``(fn, args)``: ``fn(params, opt_state, batch)`` for the train step (SGD, momentum 0.9), else
  ``fn(params, batches)`` with M + 1 stacked batches; random batches, or only their shapes if ``abstract``.
  ``model_kwargs`` go to the model (e.g. VGG's ``max_pool``)."""
  import jax
  import jax.numpy as jnp
  import optax

  import prospr_jax
  from prospr_jax.models import get_model, init_variables
  from prospr_jax.xla_cpu.conv_impl import resolve_conv_impl
  if name not in PROGRAMS:
    raise ValueError(f'unknown program {name!r}; valid: {", ".join(PROGRAMS)}')
  model = get_model(model_name, 10, conv_general_dilated=resolve_conv_impl(conv_spec), **model_kwargs)
  shape_x, shape_y = (steps + 1, batch_size, 32, 32, 3), (steps + 1, batch_size)
  if abstract:
    x, y = jax.ShapeDtypeStruct(shape_x, jnp.float32), jax.ShapeDtypeStruct(shape_y, jnp.int32)
  else:
    x = jax.random.normal(jax.random.key(0), shape_x, jnp.float32)
    y = jax.random.randint(jax.random.key(1), shape_y, 0, 10)
  variables = init_variables(model, (32, 32, 3), jax.random.key(2))  # jitted, as the library inits
  params, loss_fn = variables['params'], prospr_jax.flax_loss_fn(model, variables)
  if name == 'train_step':
    optimizer = optax.sgd(0.1, momentum=0.9)

    def step(params, opt_state, batch):
      updates, opt_state = optimizer.update(jax.grad(loss_fn)(params, batch), opt_state, params)
      return optax.apply_updates(params, updates), opt_state
    first = lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype) if abstract else a[0]
    return step, (params, optimizer.init(params), (first(x), first(y)))

  def saliency(params, batches):
    return prospr_jax.prospr_saliency(params, batches, loss_fn=loss_fn, first_order=name == 'first_order',
                                      checkpoint_steps=name != 'exact_stored')
  return saliency, (params, (x, y))
