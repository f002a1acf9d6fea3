"""What prune.py and train.py share: multi-process start-up, logging that names the process, the workdir,
and failures that end the run with a message instead of a traceback or a hang."""

from __future__ import annotations

import logging as std_logging
import os
import pathlib
import sys

import jax
import ml_collections
from absl import flags, logging

from prospr_jax import experiment
from prospr_jax.data import DatasetUnavailableError

JOBS = {'prune_and_train': experiment.prune_and_train, 'train_and_evaluate': experiment.train_and_evaluate}

_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Multi-process run: call jax.distributed.initialize() (on TPU pods and SLURM it finds '
    'its peers itself; elsewhere give --coordinator_address, --num_processes and --process_id).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (implies --distributed).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process\'s index, 0 to num_processes - 1.')
_HEARTBEAT = flags.DEFINE_integer('heartbeat_timeout_seconds', 100,
                                  'A process silent this long is declared dead and the others stop.')


def initialize_distributed() -> None:
  """Join the other processes when the flags or the environment ask for a multi-process run."""
  if not (_DISTRIBUTED.value or _COORDINATOR.value or os.environ.get('JAX_COORDINATOR_ADDRESS')):
    return
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # CPU collectives across processes (only CPU)
  jax.distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                             process_id=_PROCESS_ID.value, heartbeat_timeout_seconds=_HEARTBEAT.value)


def default_workdir(config_filename: str, job: str) -> pathlib.Path:
  name = pathlib.Path(config_filename.split(':')[0]).stem
  return pathlib.Path('workdir') / (name if job == 'prune_and_train' else f'{name}_train')


def configure_logging() -> None:
  """prospr_jax logs at INFO on process 0 (warnings and errors on every process, named by index); libraries
  (orbax, absl) only warnings."""
  handler = std_logging.StreamHandler(sys.stderr)
  handler.setFormatter(std_logging.Formatter(
      f'%(asctime)s [process {jax.process_index()}/{jax.process_count()}] %(levelname)s %(message)s', '%H:%M:%S'))
  logger = std_logging.getLogger('prospr_jax')
  logger.handlers[:] = [handler]
  logger.setLevel(std_logging.INFO if jax.process_index() == 0 else std_logging.WARNING)
  logger.propagate = False
  logging.set_verbosity(logging.WARNING)


def run(config: ml_collections.ConfigDict, workdir: str | None, config_filename: str, job: str) -> None:
  initialize_distributed()
  configure_logging()
  workdir_path = pathlib.Path(workdir) if workdir else default_workdir(config_filename, job)
  if jax.process_index() == 0:
    print(f'workdir: {workdir_path.resolve()}', flush=True)
  try:
    JOBS[job](config, workdir_path)
  except (DatasetUnavailableError, experiment.ConfigError) as error:
    print(f'error: {error}', file=sys.stderr, flush=True)
    _exit(2)
  except Exception as error:  # pylint: disable=broad-except
    if jax.process_count() == 1:
      raise
    # Another process died or disagreed: say so and leave now (a normal exit would wait for the dead peer).
    print(f'error: process {jax.process_index()} of {jax.process_count()} stopped: {type(error).__name__}: '
          f'{error}\nIn a multi-process run this usually means another process failed or was killed. Restart '
          'every process with the same command: the run resumes from its last checkpoint.', file=sys.stderr,
          flush=True)
    _exit(1)


def _exit(code: int) -> None:
  if jax.process_count() > 1:
    os._exit(code)  # skip jax.distributed's shutdown barrier, which waits for every peer
  sys.exit(code)
