"""Train a network dense, or with a saved mask: ``python train.py --config ... [--config.mask_path=mask.npz]``.

Writes metrics.jsonl, learning_curves.png and checkpoints to --workdir and
resumes from them when rerun.
"""

from absl import app, flags
from ml_collections import config_flags

from prospr_jax import entry

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/default.py', 'Experiment config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output folder (default: workdir/<config name>_train).')


def main(argv):
  del argv
  entry.run(_CONFIG.value, _WORKDIR.value, config_flags.get_config_filename(flags.FLAGS['config']), 'train_and_evaluate')


if __name__ == '__main__':
  app.run(main)
