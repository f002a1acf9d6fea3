"""Old module paths (before the package took its layered folders) keep importing, with a DeprecationWarning.

``import prospr_jax.trainer`` gives ``prospr_jax.harness.train_loop`` itself
(one module object, so patches and isinstance checks see the same thing).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {  # old -> new, both under prospr_jax
    'channel_scores': 'channels.scores', 'structured_target': 'channels.target', 'compaction': 'models.compaction',
    'models.conv': 'xla_cpu.conv', 'models.winograd': 'xla_cpu.winograd', 'models.pooling': 'xla_cpu.pooling',
    'host_memory': 'xla_cpu.host_memory',
    **{name: f'runtime.{name}' for name in
       ('faults', 'sharding', 'checkpointing', 'metrics', 'workdir', 'preemption', 'determinism')},
    **{name: f'harness.{name}' for name in
       ('entry', 'experiment', 'pruning', 'validation', 'seeds', 'cost', 'plots', 'flag_parsing', 'pruned_network')},
    'trainer': 'harness.train_loop', 'training': 'harness.train_steps',
    **{name: f'sweep.{name}' for name in ('after_training', 'iterative_rewinding', 'paper_numbers')},
}


def warn_moved(old: str, new: str, stacklevel: int = 3) -> None:
  warnings.warn(f'{old} moved to {new}: import it from there (the old path goes away in a later release)',
                DeprecationWarning, stacklevel=stacklevel)


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Finds ``prospr_jax.<old>`` and answers with the module at its new path."""

  def find_spec(self, fullname, path=None, target=None):
    old = fullname.removeprefix('prospr_jax.')
    if fullname.startswith('prospr_jax.') and old in MOVED:
      return importlib.util.spec_from_loader(fullname, self)
    return None

  def create_module(self, spec):
    new = 'prospr_jax.' + MOVED[spec.name.removeprefix('prospr_jax.')]
    warn_moved(spec.name, new, stacklevel=8)
    return importlib.import_module(new)

  def exec_module(self, module):
    del module  # already executed at its new path


def install() -> None:
  if not any(isinstance(finder, _OldPaths) for finder in sys.meta_path):
    sys.meta_path.append(_OldPaths())
