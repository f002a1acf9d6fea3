"""A workdir never lies: it records the config that made it, refuses a different one, and admits one run at a time.

``config.json`` holds the resolved config of the run that started the workdir.
A rerun whose mask- or training-defining fields differ is refused with one line
naming them; fields that only say how to run (workers, checkpoint frequency,
where the data lie) may change, and ``num_epochs`` may grow (training goes on).
A lock file holds the host and pid of the run using the workdir (process 0 of
a multi-process run); a second run is refused, naming the lock file, while that
process lives, or whenever it runs on another host (whose processes this host
cannot see).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import pathlib
import socket
from collections.abc import Iterator, Sequence
from typing import Any

import ml_collections

from prospr_jax import files

log = logging.getLogger(__name__)

CONFIG_FILE = 'config.json'
LOCK_FILE = '.lock'
# Fields that change how a run executes, not what it computes: they may differ on a rerun.
HOW_TO_RUN = frozenset({'worker_count', 'checkpoint_every_steps', 'data_dir', 'eval_batch_size', 'compare_dense',
                        'prune.check_stability', 'deterministic', 'steps_per_dispatch'})


class WorkdirError(ValueError):
  """The workdir cannot be used for this run; the message says why and the way out."""


def flatten(config: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  """``{'prune.sparsity': 0.9, ...}``: nested dicts as dotted keys, tuples as lists (as JSON has them)."""
  flat: dict[str, Any] = {}
  for key, value in config.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = json.loads(json.dumps(value))
  return flat


# Fields that change nothing unless another is true (compaction needs structured pruning): where the other is
# false on both sides, they may differ, or be absent from a config recorded before they existed.
MATTERS_ONLY_WITH = {'prune.compact': 'prune.structured', 'prune.structured_target': 'prune.structured'}
# Fields added after configs were recorded: absent from a recorded config means this value.
ADDED_FIELDS = {'prune.structured_target': 'channels', 'prune.precision': 'float32', 'prune.conv_impl': '',
                'prune.check_stability': False, 'deterministic': False,
                'data_on_device': False, 'steps_per_dispatch': 1}


# Configs recorded with a separate conv_column_mib field (a budget of MiB) read as conv_impl='auto:<MiB>'.
CONV_FIELDS, BUDGETED_CONVS = ('conv_impl', 'prune.conv_impl'), ('auto', 'im2col')


def one_conv_field(flat: dict[str, Any]) -> dict[str, Any]:
  """``flat`` with a recorded ``conv_column_mib`` folded into its ``conv_impl`` fields, every budget written alike
  (``'auto:64'``), so configs recorded before the fold compare equal to the ones that run the same way."""
  flat = dict(flat)
  legacy = flat.pop('conv_column_mib', None)
  for key in CONV_FIELDS:
    value = flat.get(key)
    if isinstance(value, str) and value:
      name, _, budget = value.partition(':')
      budget = budget or (legacy if name in BUDGETED_CONVS else None)
      try:
        flat[key] = f'{name}:{float(budget):g}' if budget not in (None, '') else name
      except ValueError:  # not a number: left as written, so it differs and the check names it
        pass
  return flat


def differing_fields(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """Dotted names of the fields whose values differ (or that only one side has) and matter.

  An unset field (None) equals an absent one: a config recorded before the field existed ran without it.
  """
  old, new = ({**ADDED_FIELDS, **one_conv_field(flatten(recorded))},
              {**ADDED_FIELDS, **one_conv_field(flatten(current))})
  differing = (key for key in old.keys() | new.keys() if old.get(key) != new.get(key))
  return sorted(key for key in differing
                if not (key in MATTERS_ONLY_WITH and not old.get(MATTERS_ONLY_WITH[key])
                        and not new.get(MATTERS_ONLY_WITH[key])))


def check_config(workdir: pathlib.Path, config: ml_collections.ConfigDict, *, write: bool = True,
                 final_files: Sequence[str] = ()) -> None:
  """Record ``config`` in a new workdir; in a used one, refuse a config that would compute something else.

  Raising ``num_epochs`` is allowed (and logged); lowering it is refused, as the
  checkpoints may already be past the new end. ``final_files`` describe the end of
  training: raising ``num_epochs`` deletes them before the new config is recorded,
  so none outlives the config it belongs to. Only a ``write`` call (process 0) records.
  """
  path = workdir / CONFIG_FILE
  current = config.to_dict()
  if not path.exists():
    if _holds_results(workdir):
      raise WorkdirError(f'{workdir} holds results but no {CONFIG_FILE} (made by an older version?), so they may '
                         'come from another config: use another --workdir, or --start_over to delete them')
    if write:
      files.write_json(path, current)
    return
  recorded = files.read_json(path, required=['num_epochs'], fix='delete the workdir\'s contents (--start_over) or '
                             'use another --workdir')
  differing = differing_fields(recorded, current)
  refused = [key for key in differing if key not in HOW_TO_RUN and key != 'num_epochs']
  old_epochs, new_epochs = recorded.get('num_epochs'), current['num_epochs']
  if 'num_epochs' in differing and new_epochs < old_epochs:
    refused.append(f'num_epochs (lowered from {old_epochs} to {new_epochs})')
  if refused:
    shown = ', '.join(_describe(key, recorded, current) for key in refused)
    raise WorkdirError(f'{workdir} was made by a different config ({shown}); its mask and checkpoints belong to '
                       'that config. Use another --workdir, or --start_over to delete its contents')
  if 'num_epochs' in differing:
    log.info('num_epochs raised from %d to %d: training continues from the last checkpoint', old_epochs, new_epochs)
    for name in final_files if write else ():
      (workdir / name).unlink(missing_ok=True)
  if differing and write:
    files.write_json(path, current)


def _describe(key: str, recorded: dict[str, Any], current: dict[str, Any]) -> str:
  return key if key.startswith('num_epochs') else describe([key], recorded, current)


def describe(keys: Sequence[str], recorded: dict[str, Any], current: dict[str, Any]) -> str:
  """``'learning_rate: 0.1 there, 0.05 now; ...'`` for the dotted ``keys`` of two configs."""
  old, new = ({**ADDED_FIELDS, **flatten(recorded)}, {**ADDED_FIELDS, **flatten(current)})
  return '; '.join(f'{key}: {old.get(key, "<absent>")!r} there, {new.get(key, "<absent>")!r} now' for key in keys)


def _holds_results(workdir: pathlib.Path) -> bool:
  return any((workdir / name).exists() for name in ('mask.npz', 'checkpoints', 'pruned', 'dense'))


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except OSError as error:
    return error.errno == errno.EPERM
  return True


def _lock_holder(path: pathlib.Path) -> tuple[int, str]:
  """``(pid, host)`` in a lock file (``pid host``; a bare pid is this host's); ``(0, '')`` when unreadable."""
  try:
    pid, _, host = path.read_text().strip().partition(' ')
    return int(pid or 0), host or socket.gethostname()
  except (OSError, ValueError):
    return 0, ''


@contextlib.contextmanager
def locked(workdir: pathlib.Path) -> Iterator[None]:
  """Hold ``workdir/.lock`` (this pid and host) for the block; refuse while a live process (or any process on
  another host) holds it, take over a stale one."""
  path, host = workdir / LOCK_FILE, socket.gethostname()
  claim = workdir / f'.lock.{os.getpid()}'
  claim.write_text(f'{os.getpid()} {host}')
  try:
    while True:
      try:
        os.link(claim, path)  # atomic: the lock appears with its pid already in it
        break
      except FileExistsError:
        pid, holder_host = _lock_holder(path)
        elsewhere = holder_host != host
        if pid and (elsewhere or (pid != os.getpid() and _pid_alive(pid))):
          raise WorkdirError(f'workdir {workdir} in use by pid {pid}{f" on {holder_host}" if elsewhere else ""} '
                             f'(lock file {path}): wait for that run to end, or use another --workdir; if no run '
                             f'uses it, delete {path}') from None
        log.warning('Removing a stale lock of pid %s in %s', pid or '?', workdir)
        path.unlink(missing_ok=True)
  finally:
    claim.unlink(missing_ok=True)
  try:
    yield
  finally:
    path.unlink(missing_ok=True)
