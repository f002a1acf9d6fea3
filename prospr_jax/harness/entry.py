"""What prune.py and train.py share: flags, multi-process start-up, logging that names the process, the workdir,
and failures that end the run with one ``error:`` line instead of a traceback or a hang.

A problem the user can fix (a bad flag or config, a missing file, an unwritable workdir) ends with exit code 2;
a full disk with 1; Ctrl-C with 130 and the checkpoint a rerun resumes from; SIGTERM (preemption) with 143, after
saving a checkpoint of the step reached (``preemption``). Set ``PROSPR_JAX_TRACEBACK=1`` to see the traceback as well.
"""

from __future__ import annotations

import errno
import logging as std_logging
import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from absl import flags, logging
from jax.experimental import multihost_utils

from prospr_jax import files
from prospr_jax.data import DatasetUnavailableError
from prospr_jax.harness import validation
from prospr_jax.harness.flag_parsing import report
from prospr_jax.runtime import determinism, preemption, workdir as workdir_lib
from prospr_jax.xla_cpu import host_memory

# Errors whose message names the problem and its fix: the user needs the message, not the traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
               DatasetUnavailableError, validation.ConfigError, files.UnreadableFileError)

_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Multi-process run: call jax.distributed.initialize() (on TPU pods and SLURM it finds '
    'its peers itself; elsewhere give --coordinator_address, --num_processes and --process_id).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (implies --distributed).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process\'s index, 0 to num_processes - 1.')
_HEARTBEAT = flags.DEFINE_integer('heartbeat_timeout_seconds', 100,
                                  'A process silent this long is declared dead and the others stop.')
_DETERMINISTIC = flags.DEFINE_bool('deterministic', False, 'Deterministic GPU kernels (XLA\'s '
                                   '--xla_gpu_deterministic_ops; slower): sets config.deterministic.')
_START_OVER = flags.DEFINE_bool('start_over', False, 'Delete the contents of the workdir first (its mask, '
                                'checkpoints and results): for a workdir made by a different config.')


def initialize_distributed() -> None:
  """Join the other processes when the flags or the environment ask for a multi-process run."""
  if not (_DISTRIBUTED.value or _COORDINATOR.value or os.environ.get('JAX_COORDINATOR_ADDRESS')):
    return
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # CPU collectives across processes (only CPU)
  jax.distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                             process_id=_PROCESS_ID.value, heartbeat_timeout_seconds=_HEARTBEAT.value)


def default_workdir(config_filename: str, suffix: str = '') -> pathlib.Path:
  """``workdir/<config name>[_<variant>]<suffix>``: a variant (``:runlocal``) never shares the full run's workdir;
  train.py's suffix ``_train`` keeps its runs apart from prune.py's."""
  file, _, variant = config_filename.partition(':')
  name = pathlib.Path(file).stem + (f'_{variant}' if variant else '')
  return pathlib.Path('workdir') / (name + suffix)


def start_over(workdir: pathlib.Path) -> None:
  """Delete everything in ``workdir`` (``--start_over``), on process 0, then let every process go on."""
  if jax.process_index() == 0 and workdir.is_dir():
    with workdir_lib.locked(workdir):  # never under a run that is using it
      print(f'--start_over: deleting the contents of {workdir.resolve()}', flush=True)
      for path in workdir.iterdir():
        if path.name == workdir_lib.LOCK_FILE:
          continue
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('start_over')


def configure_logging() -> None:
  """prospr_jax logs at INFO on process 0 (warnings and errors on every process, named by index); libraries
  (orbax, absl, JAX's backend probing, whose 'Unable to initialize backend' is no error) only warnings."""
  logging.set_verbosity(logging.WARNING)
  std_logging.getLogger('jax._src.xla_bridge').setLevel(std_logging.WARNING)
  handler = std_logging.StreamHandler(sys.stderr)
  handler.setFormatter(std_logging.Formatter(
      f'%(asctime)s [process {jax.process_index()}/{jax.process_count()}] %(levelname)s %(message)s', '%H:%M:%S'))
  logger = std_logging.getLogger('prospr_jax')
  logger.handlers[:] = [handler]
  logger.setLevel(std_logging.INFO if jax.process_index() == 0 else std_logging.WARNING)
  logger.propagate = False


def check_workdir(workdir: pathlib.Path) -> None:
  """Make the workdir and write a probe file in it: a file in the way or a read-only disk is refused now, before
  any data is read or anything compiles."""
  path = workdir.absolute()
  blocking = next(folder for folder in (path, *path.parents) if folder.exists())
  if not blocking.is_dir():
    where = 'is a file' if blocking == path else f'cannot be made: {blocking} is a file'
    raise NotADirectoryError(f'--workdir {workdir} {where}; give a folder (it is made if missing)')
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    tempfile.TemporaryFile(dir=workdir).close()
  except OSError as error:
    raise PermissionError(f'--workdir {workdir} cannot be written ({error.strerror}); give another --workdir'
                          ) from error


def last_checkpoint(workdir: pathlib.Path) -> tuple[int, pathlib.Path] | None:
  """The newest orbax checkpoint under ``workdir`` (``**/checkpoints/<step>``): its step and folder."""
  found = [(folder.stat().st_mtime, int(folder.name), folder.parent)
           for folder in workdir.glob('**/checkpoints/*') if folder.name.isdigit() and folder.is_dir()]
  return max(found)[1:] if found else None


def _caused_by(error: BaseException | None, kind: type[BaseException]) -> bool:
  """Whether ``error`` or an error behind it (its cause or context) is a ``kind``."""
  while error is not None and not isinstance(error, kind):
    error = error.__cause__ or error.__context__
  return error is not None


def _disk_full(error: BaseException | None) -> OSError | None:
  """The 'no space left' (or over quota) OSError behind ``error``, if that is what stopped the run."""
  while error is not None and not (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)):
    error = error.__cause__ or error.__context__
  return error


def failure_of(error: BaseException, workdir: pathlib.Path) -> tuple[str, int] | None:
  """The message and exit code that end the run; None for a bug in a single-process run (its traceback shows)."""
  if isinstance(error, KeyboardInterrupt):
    checkpoint = last_checkpoint(workdir)
    where = f'step {checkpoint[0]} in {checkpoint[1]}' if checkpoint else 'before the first checkpoint'
    if _caused_by(error, preemption.Preempted):
      return (f'stopped by SIGTERM (preempted?); rerun the same command to resume from the last checkpoint '
              f'({where})'), preemption.EXIT_CODE
    return f'interrupted; rerun the same command to resume from the last checkpoint ({where})', 130
  if full := _disk_full(error):
    return (f'the disk is full (writing {full.filename or workdir.absolute()}: {full.strerror}); free space there '
            'or give another --workdir'), 1
  if isinstance(error, USER_ERRORS):
    return str(error), 2
  if jax.process_count() == 1:
    return None
  # Another process died or disagreed: say so and leave now (a normal exit would wait for the dead peer).
  return (f'process {jax.process_index()} of {jax.process_count()} stopped: {type(error).__name__}: {error}\n'
          'In a multi-process run this usually means another process failed or was killed. Restart every process '
          'with the same command: the run resumes from its last checkpoint.'), 1


def first_missing_folder(workdir: pathlib.Path) -> pathlib.Path | None:
  """The outermost folder of ``workdir``'s path that does not exist yet (what a run would make), or None."""
  return next((folder for folder in reversed(workdir.absolute().parents) if not folder.exists()),
              None if workdir.exists() else workdir.absolute())


def remove_if_bare(folder: pathlib.Path | None) -> None:
  """Remove a folder this run made when it holds no result (nothing but the recorded config), on process 0."""
  if folder and jax.process_index() == 0 and folder.is_dir() and all(
      path.is_dir() or path.name == workdir_lib.CONFIG_FILE for path in folder.rglob('*')):
    shutil.rmtree(folder, ignore_errors=True)


def start(config: ml_collections.ConfigDict) -> None:
  """What every entry point does first: deterministic GPU kernels if asked (before JAX starts its backend), join
  the other processes, logging, and the compiler's freed heap handed back (not held beside the run's buffers)."""
  if config is not None and flags.FLAGS.is_parsed() and _DETERMINISTIC.value:
    config.deterministic = True
  if config is not None and config.get('deterministic'):
    determinism.request_deterministic_ops()
  initialize_distributed()
  configure_logging()
  preemption.handle_sigterm()  # SIGTERM saves a checkpoint and ends with exit code 143, as Ctrl-C ends with 130
  host_memory.release_heap_after_compiles()


def run(config: ml_collections.ConfigDict, workdir: str | None, config_filename: str,
        job: Callable[[ml_collections.ConfigDict, pathlib.Path], Any], workdir_suffix: str = '') -> None:
  """Run ``job(config, workdir)``; what stops it ends the process with one line and a meaningful exit code."""
  start(config)
  workdir_path = pathlib.Path(workdir) if workdir else default_workdir(config_filename, workdir_suffix)
  made = first_missing_folder(workdir_path)
  try:
    check_workdir(workdir_path)
    if flags.FLAGS.is_parsed() and _START_OVER.value:
      start_over(workdir_path)
    if jax.process_index() == 0:
      print(f'workdir: {workdir_path.resolve()}', flush=True)
    job(config, workdir_path)
  except (Exception, KeyboardInterrupt) as error:  # pylint: disable=broad-except
    failure = failure_of(error, workdir_path)
    if failure is None:
      raise
    remove_if_bare(made)
    report(failure[0])
    _exit(failure[1])


def _exit(code: int) -> None:
  if jax.process_count() > 1:
    os._exit(code)  # skip jax.distributed's shutdown barrier, which waits for every peer
  sys.exit(code)
