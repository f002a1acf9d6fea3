"""A finished run's network as deployable files: ``python export.py --workdir workdir/default``.

Writes to --output_dir (default: <workdir>/export): model.stablehlo (jax.export,
any batch size), model.onnx, weights.safetensors, and export.json (each file's
largest difference from the Flax model and its latency at batch 1). A structured
run exports its compact network; any other run its masked network. ONNX and
safetensors need ``pip install -e ".[export]"``. A failure ends with one
``error:`` line naming the fix (exit code 2).
"""

import pathlib
import sys

from absl import app, flags

from prospr_jax.harness import entry, export, export_formats, flag_parsing

_WORKDIR = flags.DEFINE_string('workdir', None, 'The workdir of a finished prune.py or train.py run.', required=True)
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Where the files go (default: <workdir>/export).')
_FORMATS = flags.DEFINE_list('formats', list(export_formats.FILES), 'Any of stablehlo, onnx, safetensors.')
_TRAINED = flags.DEFINE_bool('trained', True, 'The trained weights; --notrained: the weights training started from.')


def main(argv):
  del argv
  entry.configure_logging()
  try:
    report = export.export(_WORKDIR.value, _OUTPUT_DIR.value, formats=_FORMATS.value, trained=_TRAINED.value)
  except entry.USER_ERRORS as error:
    flag_parsing.report(str(error))
    sys.exit(2)
  print(export.summary(report, pathlib.Path(_OUTPUT_DIR.value or pathlib.Path(_WORKDIR.value) / 'export')))


if __name__ == '__main__':
  app.run(main)
