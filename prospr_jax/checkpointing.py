"""Checkpoints in the workdir with orbax: train state, initial params and metadata.

The data position is the step (``data/sampler.py``), so a checkpoint restores on
any number of processes and devices.

A restarted run finds the latest checkpoint and resumes from it on its own.
Saves are atomic (orbax writes to a temporary folder and renames), so a run
killed mid-save resumes from the previous checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

PyTree = Any


class Checkpointer:
  """Save and restore ``{state, initial_params, meta}`` under ``directory``."""

  def __init__(self, directory: str | os.PathLike[str], *, max_to_keep: int = 2):
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(os.path.abspath(directory), options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: PyTree, initial_params: PyTree, meta: dict) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        initial_params=ocp.args.StandardSave(initial_params),
        meta=ocp.args.JsonSave(meta)))

  def restore(self, state_template: PyTree, initial_params_template: PyTree,
              step: int | None = None) -> tuple[PyTree, PyTree, dict]:
    """Restore into the templates' structure and shardings (they may differ from the saving run's)."""
    step = self.latest_step() if step is None else step
    abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract(state_template)),
        initial_params=ocp.args.StandardRestore(abstract(initial_params_template)),
        meta=ocp.args.JsonRestore()))
    return restored['state'], restored['initial_params'], restored['meta']

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
