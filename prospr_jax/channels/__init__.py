"""Structured pruning: channel groups (tied across residual sums) and their scores and weight targets."""


def __getattr__(name: str):
  """``prospr_jax.channels`` was one module: its names (``ChannelPlan``, ``expand``, ...) still resolve here, with a
  DeprecationWarning; they live in ``prospr_jax.channels.groups``."""
  import importlib
  import warnings
  groups = importlib.import_module('prospr_jax.channels.groups')
  if name.startswith('__') or not hasattr(groups, name):
    raise AttributeError(f'module prospr_jax.channels has no attribute {name!r}')
  warnings.warn(f'prospr_jax.channels.{name} moved to prospr_jax.channels.groups.{name}', DeprecationWarning,
                stacklevel=2)
  return getattr(groups, name)
