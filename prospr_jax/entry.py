"""What prune.py and train.py share: logging that names the process, the workdir, friendly failures."""

from __future__ import annotations

import logging as std_logging
import pathlib
import sys

import jax
import ml_collections
from absl import logging

from prospr_jax import experiment
from prospr_jax.data import DatasetUnavailableError

JOBS = {'prune_and_train': experiment.prune_and_train, 'train_and_evaluate': experiment.train_and_evaluate}


def default_workdir(config_filename: str, job: str) -> pathlib.Path:
  name = pathlib.Path(config_filename.split(':')[0]).stem
  return pathlib.Path('workdir') / (name if job == 'prune_and_train' else f'{name}_train')


def configure_logging() -> None:
  """prospr_jax logs at INFO with the process index; libraries (orbax, absl) only warnings."""
  handler = std_logging.StreamHandler(sys.stderr)
  handler.setFormatter(std_logging.Formatter(
      f'%(asctime)s [process {jax.process_index()}/{jax.process_count()}] %(levelname)s %(message)s', '%H:%M:%S'))
  logger = std_logging.getLogger('prospr_jax')
  logger.handlers[:] = [handler]
  logger.setLevel(std_logging.INFO)
  logger.propagate = False
  logging.set_verbosity(logging.WARNING)


def run(config: ml_collections.ConfigDict, workdir: str | None, config_filename: str, job: str) -> None:
  configure_logging()
  workdir_path = pathlib.Path(workdir) if workdir else default_workdir(config_filename, job)
  print(f'workdir: {workdir_path.resolve()}', flush=True)
  try:
    JOBS[job](config, workdir_path)
  except (DatasetUnavailableError, experiment.ConfigError) as error:
    print(f'error: {error}', file=sys.stderr)
    sys.exit(2)
