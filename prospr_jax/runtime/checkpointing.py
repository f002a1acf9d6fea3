"""Checkpoints in the workdir with orbax: train state, initial params and metadata.

The data position is the step (``data/sampler.py``), so a checkpoint restores on
any number of processes and devices.

A restarted run finds the latest checkpoint and resumes from it on its own.
Saves are atomic (orbax writes to a temporary folder and renames), so a run
killed mid-save resumes from the previous checkpoint. A checkpoint corrupted
after its save (a full disk, a bad copy) is set aside, with a warning, and the
run resumes from the newest one that restores.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pathlib
import shutil
import signal
import threading
import time
from collections.abc import Iterator

import jax
import orbax.checkpoint as ocp
from chex import ArrayTree

log = logging.getLogger(__name__)
SAVE_MARGIN_BYTES = 2**18  # orbax's metadata files beside the arrays


class CheckpointError(RuntimeError, ValueError):
  """No checkpoint restores (corrupt, or of another config); one line naming the folder and the fix."""


class Checkpointer:
  """Save and restore ``{state, initial_params, meta}`` under ``directory``."""

  def __init__(self, directory: str | os.PathLike[str], *, max_to_keep: int = 2):
    self.directory = pathlib.Path(os.path.abspath(directory))
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    """The saved steps, oldest first."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: ArrayTree, initial_params: ArrayTree, meta: dict) -> None:
    """Start an async save of ``step``; Ctrl-C waits until orbax has taken it over. A disk without room for it is
    refused first (``OSError`` ENOSPC naming the folder), before orbax's threads fail on it one by one."""
    needed = sum(leaf.nbytes for leaf in jax.tree.leaves((state, initial_params))) + SAVE_MARGIN_BYTES
    free = shutil.disk_usage(self.directory).free
    if free < needed:
      raise OSError(errno.ENOSPC, f'No space left on device: a checkpoint needs about {needed / 2**20:.1f} MiB, '
                    f'{free / 2**20:.1f} MiB are free', str(self.directory))
    with ctrl_c_deferred():
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          initial_params=ocp.args.StandardSave(initial_params),
          meta=ocp.args.JsonSave(meta)))

  def restore(self, state_template: ArrayTree, initial_params_template: ArrayTree,
              step: int | None = None) -> tuple[ArrayTree, ArrayTree, dict]:
    """Restore ``step``, or else the newest checkpoint that restores, setting newer corrupt ones aside.

    The templates give the structure and shardings (they may differ from the saving run's). Only a fallback
    proves a newer checkpoint corrupt; when none restores (it may be a config change) nothing is moved.
    """
    if step is not None:
      try:
        return self._restore_step(step, state_template, initial_params_template)
      except Exception as error:  # pylint: disable=broad-except  (orbax and TensorStore raise many kinds)
        raise CheckpointError(
            f'Checkpoint {self._path(step)} does not restore ({_summary(error)}): it is corrupt or was saved by a '
            f'different config. Delete {self.directory} to train again, or train in a new workdir.') from None
    if not self.steps():
      raise FileNotFoundError(f'No checkpoint in {self.directory} to restore')
    failures: dict[int, Exception] = {}
    for candidate in reversed(self.steps()):
      try:
        restored = self._restore_step(candidate, state_template, initial_params_template)
      except Exception as error:  # pylint: disable=broad-except  (orbax and TensorStore raise many kinds)
        log.debug('Checkpoint %s does not restore', self._path(candidate), exc_info=error)
        failures[candidate] = error
        continue
      self._set_aside(failures, resumed_from=candidate)
      return restored
    for bad, error in failures.items():
      log.warning('Checkpoint %s does not restore (%s)', self._path(bad), _summary(error))
    raise CheckpointError(
        f'No checkpoint in {self.directory} restores (steps {", ".join(map(str, failures))}): they are corrupt or '
        f'were saved by a different config. Delete {self.directory} to start over, or train in a new workdir.'
    ) from None

  def wait(self) -> None:
    """Block until the saves in flight are committed; Ctrl-C meanwhile takes effect after them. A save that failed
    leaves no temporary folder behind."""
    with ctrl_c_deferred():
      try:
        self._manager.wait_until_finished()
      except Exception:
        if jax.process_index() == 0:
          for temporary in self.directory.glob('*.orbax-checkpoint-tmp*'):
            shutil.rmtree(temporary, ignore_errors=True)
        raise

  def close(self) -> None:
    with ctrl_c_deferred():
      self._manager.close()

  def _restore_step(self, step: int, state_template: ArrayTree,
                    initial_params_template: ArrayTree) -> tuple[ArrayTree, ArrayTree, dict]:
    """Restore one step into the templates' structure and shardings."""
    abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract(state_template)),
        initial_params=ocp.args.StandardRestore(abstract(initial_params_template)),
        meta=ocp.args.JsonRestore()))
    return restored['state'], restored['initial_params'], restored['meta']

  def _set_aside(self, failures: dict[int, Exception], *, resumed_from: int) -> None:
    """Rename corrupt checkpoints out of orbax's sight, so saving their steps again works and max_to_keep
    counts only good ones; renamed, not deleted, in case the error was a passing one."""
    if not failures:
      return
    stamp = time.strftime('%Y%m%d-%H%M%S')
    for bad, error in failures.items():
      aside = self._path(bad).with_name(f'{bad}.corrupt-{stamp}')  # not a step name: orbax ignores it
      log.warning('Checkpoint %s does not restore (%s); moved it to %s and resumed from step %d',
                  self._path(bad), _summary(error), aside.name, resumed_from)
      if jax.process_index() == 0:
        self._path(bad).rename(aside)
    ocp.multihost.sync_global_processes(f'prospr_jax_checkpoints_set_aside_{"_".join(map(str, failures))}')
    self._manager.reload()

  def _path(self, step: int) -> pathlib.Path:
    return self.directory / str(step)


@contextlib.contextmanager
def ctrl_c_deferred() -> Iterator[None]:
  """Hold a SIGINT until the block ends, then raise KeyboardInterrupt: a save is never cut half way, and the
  interpreter never exits under a save thread still writing (whose traceback would follow the one-line error)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  received = []
  previous = signal.signal(signal.SIGINT, lambda *_: received.append(True))
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
    if received:
      raise KeyboardInterrupt


def _summary(error: Exception, width: int = 120) -> str:
  """The error's type and the start of its message on one line (TensorStore's run to pages)."""
  message = ' '.join(str(error).split())
  message = message if len(message) <= width else message[:width - 1] + '…'
  return f'{type(error).__name__}: {message}' if message else type(error).__name__
