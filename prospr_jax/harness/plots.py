"""PNG plots people can read: per-layer density of a mask, learning curves of a run."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

from prospr_jax import files
from prospr_jax.sparsity import SparsityReport


def pyplot():
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def _save(fig, path: str | os.PathLike[str]) -> None:
  """PNG bytes, written atomically (a kill never leaves half an image)."""
  buffer = io.BytesIO()
  fig.savefig(buffer, dpi=120, format='png')
  pyplot().close(fig)
  files.write_bytes(path, buffer.getvalue())


def layer_density_figure(report: SparsityReport, title: str = '', unit: str = 'weights'):
  """One bar per masked layer, in forward order of the tree: the fraction of its ``unit`` (the mask's entries:
  weights, or channels for a channel mask) kept."""
  plt = pyplot()
  names = [layer.name.replace('/kernel', '') for layer in report.layers]
  fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names) + 2), 4))
  ax.bar(range(len(names)), [100 * layer.density for layer in report.layers], color='tab:blue')
  ax.axhline(100 * report.density, color='tab:red', linestyle='--', label=f'overall {report.density:.2%}')
  ax.set_xticks(range(len(names)), names, rotation=75, ha='right', fontsize=7)
  ax.set_ylabel(f'{unit} kept (%)')
  ax.set_title(title or f'Per-layer density of the mask ({unit})')
  ax.legend()
  fig.tight_layout()
  return fig


def plot_layer_density(report: SparsityReport, path: str | os.PathLike[str], title: str = '',
                       unit: str = 'weights') -> None:
  """``layer_density_figure`` as a PNG."""
  _save(layer_density_figure(report, title, unit), path)


def learning_curves_figure(rows: Sequence[dict[str, Any]], title: str = ''):
  """Train loss and eval top-1 per epoch from metric rows (one dict per epoch); every epoch marked, so one shows."""
  plt = pyplot()
  from matplotlib import ticker
  epochs = [row['epoch'] for row in rows]
  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
  left.plot(epochs, [row['train_loss'] for row in rows], marker='o', markersize=4, label='train')
  left.plot(epochs, [row['eval_loss'] for row in rows], marker='o', markersize=4, label='eval')
  left.set_xlabel('epoch'), left.set_ylabel('loss'), left.legend()
  right.plot(epochs, [100 * row['train_accuracy'] for row in rows], marker='o', markersize=4, label='train')
  right.plot(epochs, [100 * row['eval_top1'] for row in rows], marker='o', markersize=4, label='eval top-1')
  right.set_xlabel('epoch'), right.set_ylabel('accuracy (%)'), right.legend()
  for ax in (left, right):
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True, min_n_ticks=1))  # epochs, not fractions of one
  fig.suptitle(title)
  fig.tight_layout()
  return fig


def plot_learning_curves(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str = '') -> None:
  """``learning_curves_figure`` as a PNG."""
  _save(learning_curves_figure(rows, title), path)
