"""Prune at initialization, then train the pruned network: ``python prune.py --config configs/<name>.py``.

Writes to --workdir: mask.npz, sparsity_report.{json,txt}, layer_density.png,
and per network metrics.jsonl, learning_curves.png and checkpoints. Rerunning
the same command resumes from the last checkpoint.

A failed run ends with one ``error:`` line naming the fix (exit code 2; 1 for a
full disk; 130 for Ctrl-C; 143 for SIGTERM, after saving a checkpoint); set
PROSPR_JAX_TRACEBACK=1 to see the traceback too.
"""

from absl import app, flags
from ml_collections import config_flags

from prospr_jax.harness import entry, experiment, flag_parsing

_CONFIG = flag_parsing.define_config_flag('configs/default.py', 'Experiment config file (relative to the current folder, '
                                   'else to this script\'s).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output folder (default: workdir/<config name>).')


def main(argv):
  del argv
  config_filename = config_flags.get_config_filename(flags.FLAGS['config'])
  entry.run(_CONFIG.value, _WORKDIR.value, config_filename, experiment.prune_and_train)


if __name__ == '__main__':
  app.run(main, flags_parser=flag_parsing.parse_flags)
