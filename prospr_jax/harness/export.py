"""A finished run's network as deployable files, each checked against the Flax model when written.

``export(workdir)`` writes ``<workdir>/export/``: ``model.stablehlo``, ``model.onnx`` and
``weights.safetensors`` (``export_formats``) of the run's compact or masked network in inference mode
(``deployed_network``), and ``export.json``: per file its size, the largest absolute difference of its logits
from the Flax model's on a batch of random images (at two batch sizes) and its latency at batch 1 beside the
Flax model's (median of repeated calls, this machine).
"""

from __future__ import annotations

import pathlib
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from prospr_jax import files
from prospr_jax.harness import deployed_network, export_formats
from prospr_jax.models import get_model

REPORT_FILE = 'export.json'
CHECK_BATCH_SIZES = (1, 8)


def latency(fn: Callable[[Any], Any], images: np.ndarray, repeats: int = 21) -> float:
  """Median seconds of ``fn(images)`` after one warm-up call, waiting for the result."""
  jax.block_until_ready(fn(images))
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(images))
    seconds.append(time.perf_counter() - start)
  return statistics.median(seconds)


def max_difference(fn: Callable[[Any], Any], reference: Callable[[Any], Any], batches: Sequence[np.ndarray]) -> float:
  """The largest absolute difference of ``fn``'s logits from ``reference``'s over ``batches``."""
  worst = 0.0
  for images in batches:
    got, want = np.asarray(fn(images)), np.asarray(reference(images))
    if got.shape != want.shape:
      raise ValueError(f'the exported model gives logits of shape {got.shape}, the Flax model {want.shape}')
    worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))))
  return worst


def safetensors_model(variables: dict[str, Any], metadata: dict[str, Any]) -> Callable[[Any], Any]:
  """The zoo model rebuilt from a safetensors file's metadata, applied to its variables (mask left out)."""
  model = get_model(metadata['model'], metadata['num_classes'], **metadata['model_kwargs'])
  weights = {key: value for key, value in variables.items() if key != 'mask'}
  return jax.jit(lambda images: model.apply(weights, images, train=False))


def export(workdir: str | pathlib.Path, output_dir: str | pathlib.Path | None = None, *,
           formats: Sequence[str] = tuple(export_formats.FILES), trained: bool = True) -> dict[str, Any]:
  """Write the run's network in ``formats`` to ``output_dir`` (default ``<workdir>/export``), check each file
  against the Flax model, and write ``export.json``; returns its contents.

  ``trained=False`` exports the network as it started training. Refused with one line: an unknown format, a
  format whose packages are missing (``pip install -e ".[export]"``), a workdir without a finished run.
  """
  formats = export_formats.check_formats(formats)
  network = deployed_network.load_network(workdir, trained)
  output = pathlib.Path(output_dir) if output_dir else pathlib.Path(workdir) / 'export'
  output.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  batches = [rng.standard_normal((size, *network.input_shape)).astype(np.float32) for size in CHECK_BATCH_SIZES]
  flax_model = jax.jit(network.apply)
  report: dict[str, Any] = {
      'workdir': str(pathlib.Path(workdir).resolve()), 'network': network.kind, **network.metadata,
      'check_batch_sizes': list(CHECK_BATCH_SIZES), 'device': jax.devices()[0].device_kind,
      'jax': jax.__version__, 'flax_latency_batch_1_seconds': latency(flax_model, batches[0]), 'files': {}}
  name = f'{network.metadata["model"]}_{network.kind}'
  for fmt in formats:
    path = output / export_formats.FILES[fmt]
    if fmt == 'stablehlo':
      run = export_formats.write_stablehlo(network.apply, network.input_shape, path)
    elif fmt == 'onnx':
      run = export_formats.write_onnx(network.apply, network.input_shape, path, name)
    else:
      run = safetensors_model(*export_formats.write_safetensors(network.variables, network.mask,
                                                                network.metadata, path))
    report['files'][fmt] = {'file': path.name, 'bytes': path.stat().st_size,
                            'max_abs_difference': max_difference(run, flax_model, batches),
                            'latency_batch_1_seconds': latency(run, batches[0])}
  files.write_json(output / REPORT_FILE, report)
  return report


def summary(report: dict[str, Any], output: pathlib.Path) -> str:
  """The report as a few lines: each file, its difference from the Flax model and its latency at batch 1."""
  lines = [f'{report["model"]} ({report["network"]} network, {"trained" if report["trained"] else "initial"} '
           f'weights) -> {output}',
           f'{"file":<22}{"bytes":>12}{"max |diff|":>14}{"batch-1 latency":>18}',
           f'{"flax (reference)":<22}{"":>12}{"":>14}{report["flax_latency_batch_1_seconds"] * 1e3:>15.3f} ms']
  for entry in report['files'].values():
    lines.append(f'{entry["file"]:<22}{entry["bytes"]:>12,}{entry["max_abs_difference"]:>14.2e}'
                 f'{entry["latency_batch_1_seconds"] * 1e3:>15.3f} ms')
  return '\n'.join(lines)
