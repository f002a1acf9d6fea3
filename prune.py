"""Prune at initialization, then train the pruned network: ``python prune.py --config configs/<name>.py``.

Writes to --workdir: mask.npz, sparsity_report.{json,txt}, layer_density.png,
and per network metrics.jsonl, learning_curves.png and checkpoints. Rerunning
the same command resumes from the last checkpoint.
"""

from absl import app, flags
from ml_collections import config_flags

from prospr_jax import entry

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/default.py', 'Experiment config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output folder (default: workdir/<config name>).')


def main(argv):
  del argv
  entry.run(_CONFIG.value, _WORKDIR.value, config_flags.get_config_filename(flags.FLAGS['config']), 'prune_and_train')


if __name__ == '__main__':
  app.run(main)
