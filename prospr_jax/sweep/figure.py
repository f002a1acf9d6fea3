"""The paper's Figure 2 for a sweep: top-1 against sparsity on a log axis, one line per criterion, ± std bands.

Sparsity ``s`` is plotted at ``-log10(1 - s)`` (so 90%, 99%, 99.9% are evenly
spaced, as in the paper) with tick labels in % sparsity; the dense network is a
horizontal line with its band. The points are the table's means, in %: a seed
whose mask emptied a layer counts at chance accuracy there as in the table, and
such a point is crossed. The references that prune after training
(``after_training``) are dashed lines with square markers, labelled "(after
training)". Every criterion has its own colour, the same in every figure.

Where the criteria lie close together (within a point while one, often random,
spreads over tens), a second panel zooms on the better half of the criteria at
each sparsity (``zoom_range``): the others are drawn there too, but do not set
its axis, and it shows ± std as error bars, not bands.
"""

from __future__ import annotations

import io
import math
import pathlib
import zlib
from typing import TYPE_CHECKING, Any

from prospr_jax import files
from prospr_jax.criteria import registry
from prospr_jax.harness import plots
from prospr_jax.sweep import after_training
from prospr_jax.sweep.grid import DENSE, Grid
from prospr_jax.sweep.table import Summary, chance_top1, lookup, sparsity_labels, title

if TYPE_CHECKING:
  from matplotlib.axes import Axes
  from matplotlib.figure import Figure

FIGURE_NAME = 'accuracy_vs_sparsity'
COLOURS: dict[str, str] = {  # one per criterion, fixed: the same criterion has the same colour in every figure
    'prospr': '#d62728', 'snip': '#1f77b4', 'snip_mb': '#9ecae1', 'grasp': '#2ca02c', 'grasp_mb': '#98df8a',
    'synflow': '#9467bd', 'iterative_snip': '#17becf', 'force': '#bcbd22', 'magnitude': '#8c564b',
    'random': '#7f7f7f', 'three_sp': '#ff7f0e', 'three_sp_reinit': '#ffbb78', 'three_sp_rescale': '#e377c2',
    'magnitude_after_training': '#7b4173', 'lottery_rewind': '#393b79',
}
SPARE_COLOURS = ('#637939', '#843c39', '#e6550d', '#3182bd', '#31a354', '#756bb1', '#8c6d31', '#de9ed6')
ZOOM_AT_MOST = 0.5  # the zoomed panel is drawn when its y span is at most this fraction of the full panel's
MARGIN = 0.05  # of a panel's y span, above and below
COLLAPSED = 'a seed collapsed or diverged (counted at chance)'


def colour(criterion: str) -> str:
  """The criterion's colour: ``COLOURS``, else a spare one by its place among the registry's names without one."""
  if criterion in COLOURS:
    return COLOURS[criterion]
  unnamed = [name for name in (*registry.CRITERIA, *after_training.REFERENCES) if name not in COLOURS]
  index = unnamed.index(criterion) if criterion in unnamed else zlib.crc32(criterion.encode())
  return SPARE_COLOURS[index % len(SPARE_COLOURS)]


def sparsity_position(sparsity: float) -> float:
  """Where ``sparsity`` sits on the x axis: ``-log10(1 - sparsity)`` (0 for dense, 1 for 90%, 2 for 99%)."""
  return -math.log10(1.0 - sparsity)


def series(summaries: dict[tuple[str, float], Summary], grid: Grid) -> dict[str, list[tuple[float, Summary]]]:
  """Per criterion, its finished ``(sparsity, summary)`` points in sparsity order."""
  return {criterion: [(s, summary) for s in grid.sparsities if (summary := lookup(summaries, criterion, s))]
          for criterion in grid.criteria}


def _span(low: float, high: float) -> tuple[float, float]:
  pad = MARGIN * max(high - low, 1e-6)
  return low - pad, high + pad


def full_range(summaries: dict[tuple[str, float], Summary], grid: Grid, chance: float) -> tuple[float, float]:
  """The full panel's y range: every band, the dense one and chance accuracy."""
  points = [summary for points in series(summaries, grid).values() for _, summary in points]
  if (dense := summaries.get((DENSE, 0.0))) is not None:
    points.append(dense)
  low = min([chance] + [p.mean - (p.std or 0.0) for p in points])
  high = max([chance] + [p.mean + (p.std or 0.0) for p in points])
  return _span(low, high)


def zoom_range(summaries: dict[tuple[str, float], Summary], grid: Grid, chance: float) -> tuple[float, float] | None:
  """The zoomed panel's y range: the bands of the better half of the criteria at each sparsity and the dense one;
  None when that is over ``ZOOM_AT_MOST`` of the full panel (nothing to zoom on)."""
  leading = []
  for sparsity in grid.sparsities:
    here = sorted((p for c in grid.criteria if (p := lookup(summaries, c, sparsity))), key=lambda p: -p.mean)
    leading += here[:math.ceil(len(here) / 2)]
  if (dense := summaries.get((DENSE, 0.0))) is not None:
    leading.append(dense)
  if not leading:
    return None
  low, high = _span(min(p.mean - (p.std or 0.0) for p in leading), max(p.mean + (p.std or 0.0) for p in leading))
  full = full_range(summaries, grid, chance)
  return (low, high) if high - low <= ZOOM_AT_MOST * (full[1] - full[0]) else None


def _draw(ax: Axes, summaries: dict[tuple[str, float], Summary], grid: Grid, chance: float, zoomed: bool) -> None:
  """The dense line, chance, and per criterion its line, ± std (bands; error bars when zoomed), crossed collapses."""
  if (dense := summaries.get((DENSE, 0.0))) is not None:
    ax.axhline(dense.mean, color='black', linestyle='--', label=DENSE)
    if dense.std:
      ax.axhspan(dense.mean - dense.std, dense.mean + dense.std, color='black', alpha=0.1)
  ax.axhline(chance, color='grey', linestyle=':', linewidth=1, label=f'chance ({chance:.0f}%)')
  crossed = False
  for criterion, points in series(summaries, grid).items():
    if not points:
      continue
    x = [sparsity_position(s) for s, _ in points]
    mean = [summary.mean for _, summary in points]
    std = [summary.std or 0.0 for _, summary in points]
    reference = after_training.is_reference(criterion)  # prunes after training: dashed, as in the paper
    style = dict(color=colour(criterion), marker='s' if reference else 'o', markersize=4,
                 linestyle='--' if reference else '-',
                 label=f'{criterion} (after training)' if reference else criterion)
    if zoomed:
      ax.errorbar(x, mean, yerr=std, capsize=2, elinewidth=0.8, **style)
    else:
      ax.plot(x, mean, **style)
      ax.fill_between(x, [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)],
                      color=style['color'], alpha=0.2, linewidth=0)
    collapsed = [(xi, summary.mean) for xi, (_, summary) in zip(x, points)
                 if summary.collapsed or summary.diverged]
    if collapsed:
      ax.scatter(*zip(*collapsed), marker='x', s=45, color='black', zorder=5, gid=COLLAPSED,
                 label='_nolegend_' if crossed else COLLAPSED)
      crossed = True
  ax.set_xticks([sparsity_position(s) for s in grid.sparsities], sparsity_labels(grid.sparsities),
                rotation=60 if len(grid.sparsities) > 8 else 0, fontsize=8)
  ax.set_xlabel('sparsity (%), log scale of the density')
  ax.set_ylabel('top-1 accuracy (%)')
  ax.grid(alpha=0.3)


def draw_figure(summaries: dict[tuple[str, float], Summary], grid: Grid, config: dict[str, Any]) -> Figure:
  """The matplotlib Figure: every criterion on the full range (``axes[0]``), and a zoomed panel where it helps."""
  plt = plots.pyplot()
  chance = chance_top1(config)
  zoom = zoom_range(summaries, grid, chance)
  fig, axes = plt.subplots(1, 2 if zoom else 1, figsize=(14, 5.5) if zoom else (8, 5), squeeze=False)
  full, *rest = axes[0]
  _draw(full, summaries, grid, chance, zoomed=False)
  full.set_ylim(*full_range(summaries, grid, chance))
  handles, labels = full.get_legend_handles_labels()
  order = sorted(range(len(labels)), key=lambda i: labels[i] == COLLAPSED)  # the cross last, after the series
  full.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=7, loc='lower left')
  if zoom:
    _draw(rest[0], summaries, grid, chance, zoomed=True)
    rest[0].set_ylim(*zoom)
    rest[0].set_title('zoomed on the better half of the criteria at each sparsity (± std as bars)', fontsize=9)
    full.set_title('all criteria (± std as bands)', fontsize=9)
  fig.suptitle(title(config, grid, summaries))
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
