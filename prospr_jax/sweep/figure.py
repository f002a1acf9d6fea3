"""The paper's Figure 2 for a sweep: top-1 against sparsity on a log axis, one line per criterion, ± std bands.

Sparsity ``s`` is plotted at ``-log10(1 - s)`` (so 90%, 99%, 99.9% are evenly
spaced, as in the paper) with tick labels in % sparsity; the dense network is a
horizontal line with its band. The points are the table's means, in %. The
references that prune after training (``after_training``) are dashed lines
with square markers, labelled "(after training)".
"""

from __future__ import annotations

import io
import math
import pathlib
from typing import TYPE_CHECKING, Any

from prospr_jax import after_training, files, plots
from prospr_jax.sweep.grid import DENSE, Grid
from prospr_jax.sweep.table import Summary, lookup, sparsity_labels, title

if TYPE_CHECKING:
  from matplotlib.figure import Figure

FIGURE_NAME = 'accuracy_vs_sparsity'


def sparsity_position(sparsity: float) -> float:
  """Where ``sparsity`` sits on the x axis: ``-log10(1 - sparsity)`` (0 for dense, 1 for 90%, 2 for 99%)."""
  return -math.log10(1.0 - sparsity)


def series(summaries: dict[tuple[str, float], Summary], grid: Grid) -> dict[str, list[tuple[float, Summary]]]:
  """Per criterion, its finished ``(sparsity, summary)`` points in sparsity order."""
  return {criterion: [(s, summary) for s in grid.sparsities
                      if (summary := lookup(summaries, criterion, s)) and summary.mean is not None]
          for criterion in grid.criteria}


def draw_figure(summaries: dict[tuple[str, float], Summary], grid: Grid, config: dict[str, Any]) -> Figure:
  """The matplotlib Figure: a marked line and a shaded ± std band per criterion, dense as a horizontal line."""
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(8, 5))
  if (dense := summaries.get((DENSE, 0.0))) is not None:
    ax.axhline(dense.mean, color='black', linestyle='--', label=DENSE)
    if dense.std:
      ax.axhspan(dense.mean - dense.std, dense.mean + dense.std, color='black', alpha=0.1)
  for criterion, points in series(summaries, grid).items():
    if not points:
      continue
    x = [sparsity_position(s) for s, _ in points]
    mean = [summary.mean for _, summary in points]
    std = [summary.std or 0.0 for _, summary in points]
    reference = after_training.is_reference(criterion)  # prunes after training: dashed, as in the paper
    (line,) = ax.plot(x, mean, marker='s' if reference else 'o', markersize=4, linestyle='--' if reference else '-',
                      label=f'{criterion} (after training)' if reference else criterion)
    ax.fill_between(x, [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)],
                    color=line.get_color(), alpha=0.2, linewidth=0)
  ax.set_xticks([sparsity_position(s) for s in grid.sparsities], sparsity_labels(grid.sparsities),
                rotation=60 if len(grid.sparsities) > 8 else 0, fontsize=8)
  ax.set_xlabel('sparsity (%), log scale of the density')
  ax.set_ylabel('top-1 accuracy (%)')
  ax.set_title(title(config, grid))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


def save_figure(fig: Figure, stem: pathlib.Path) -> list[pathlib.Path]:
  """``<stem>.png`` and ``<stem>.pdf``, each written atomically; the figure is closed."""
  paths = []
  for suffix in ('png', 'pdf'):
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=150, format=suffix)
    path = stem.with_suffix(f'.{suffix}')
    files.write_bytes(path, buffer.getvalue())
    paths.append(path)
  plots.pyplot().close(fig)
  return paths
