"""A sweep's results: one row per finished cell, then top-1 mean ± std over seeds per criterion x sparsity.

The tables follow the paper's appendix B (Tables 3-5): criteria as rows,
sparsities as columns, and beside our number the paper's where it has one
(for the references that prune after training too: ``magnitude_after_training``, ``lottery_rewind_iterative``).
Means and standard deviations are in %, the standard deviation the sample one
(ddof = 1), absent for a single seed. A seed whose mask emptied a layer (layer
collapse) is a result of the criterion: it counts at chance accuracy (100 /
classes %) in the mean and std, and the cell says how many seeds collapsed.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from prospr_jax import data
from prospr_jax.sweep import after_training, cells, paper_numbers
from prospr_jax.sweep.grid import DENSE, Grid

MISSING = '—'


@dataclasses.dataclass(frozen=True)
class Summary:
  """Top-1 in % over the finished seeds of one criterion x sparsity; a collapsed or diverged seed counts at chance."""
  mean: float
  std: float | None  # sample std (ddof = 1); None for one seed
  n: int  # seeds in the mean, the collapsed and diverged ones included
  collapsed: int = 0  # of them, seeds whose mask left no path from input to output (layer collapse: at chance)
  diverged: int = 0  # of them, seeds whose training loss became NaN or infinite (at chance)


def chance_top1(config: dict[str, Any]) -> float:
  """The top-1 (%) of a network that outputs a constant on the config's dataset: 100 / its number of classes."""
  return 100.0 / data.get_dataset_info(config['dataset']).num_classes


def summarize(rows: Iterable[dict[str, Any]], chance: float) -> dict[tuple[str, float], Summary]:
  """``{(criterion, sparsity): Summary}`` of top-1 over seeds, a collapsed or diverged seed at ``chance`` (%); the
  dense network is ``('dense', 0.0)``."""
  groups: dict[tuple[str, float], list[float]] = {}
  counts: dict[tuple[tuple[str, float], str], int] = {}
  for row in rows:
    key = (row['criterion'], row['sparsity'])
    outcomes = list(cells.at_chance(row))
    for outcome in outcomes:
      counts[key, outcome] = counts.get((key, outcome), 0) + 1
    groups.setdefault(key, []).append(chance if outcomes else 100.0 * row['top1'])
  return {key: Summary(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values),
                       counts.get((key, 'collapsed'), 0), counts.get((key, 'diverged'), 0))
          for key, values in groups.items()}


def lookup(summaries: dict[tuple[str, float], Summary], criterion: str, sparsity: float) -> Summary | None:
  """The summary of one table cell; the dense row has the same one in every column."""
  return summaries.get((DENSE, 0.0) if criterion == DENSE else (criterion, sparsity))


def sparsity_labels(sparsities: Sequence[float]) -> list[str]:
  """Column labels in %, with one decimal as in the paper, more where one decimal would merge two columns."""
  def label(sparsity: float) -> str:
    others = [s for s in sparsities if s != sparsity]
    decimals = next((d for d in range(1, 7)
                     if all(f'{100 * s:.{d}f}' != f'{100 * sparsity:.{d}f}' for s in others)), 6)
    return f'{100 * sparsity:.{decimals}f}'
  return [label(s) for s in sparsities]


def format_summary(summary: Summary | None) -> str:
  """``mean ± std (n=3)``; with collapsed seeds ``17.77 ± 13.45 (n=3, 2 collapsed)``; ``—`` for no seed."""
  if summary is None:
    return MISSING
  spread = '' if summary.std is None else f' ± {summary.std:.2f}'
  collapse = f', {summary.collapsed} collapsed' if summary.collapsed else ''
  diverged = f', {summary.diverged} diverged' if summary.diverged else ''
  return f'{summary.mean:.2f}{spread} (n={summary.n}{collapse}{diverged})'


def _paper(config: dict[str, Any], criterion: str, sparsity: float) -> tuple[float, float] | None:
  return paper_numbers.paper_top1(config['model'], config['dataset'], criterion, sparsity)


def _has_paper_numbers(config: dict[str, Any]) -> bool:
  return (config['model'], config['dataset']) in paper_numbers.PAPER_TOP1


def title(config: dict[str, Any], grid: Grid, summaries: dict[tuple[str, float], Summary] | None = None) -> str:
  """``<model> on <dataset>, <epochs> epochs, <seeds> seeds``; where a point has fewer seeds finished than the grid
  asks for (a budget cut, a sweep in progress), how many: ``3 seeds asked, 1 to 3 finished per point``."""
  epochs, seeds = config['num_epochs'], grid.seeds
  finished = sorted({summary.n for summary in (summaries or {}).values()})
  counts = f'{seeds} seed{"s" * (seeds != 1)}'
  if finished and finished != [seeds]:
    low, high = finished[0], finished[-1]
    counts += f' asked, {low if low == high else f"{low} to {high}"} finished per point'
  return f'{config["model"]} on {config["dataset"]}, {epochs} epoch{"s" * (epochs != 1)}, {counts}'



def _references_note(grid: Grid) -> str:
  """A sentence naming the grid's references that prune after training, or nothing."""
  names = [c for c in grid.criteria if after_training.is_reference(c)]
  return (' Pruned after training (references: magnitude pruning of the trained dense network of each seed, not at '
          f'initialization): {"; ".join(f"{c} ({after_training.DESCRIPTIONS[c]})" for c in names)}.') if names else ''


def environments_note(rows: Iterable[dict[str, Any]]) -> str:
  """A sentence naming the environments (JAX version, backend, device) the rows were computed in, where they are
  more than one: a mean over rows of several is not one machine's number."""
  seen = []
  for row in rows:
    for env in row.get('ran_on') or [None]:
      label = 'not recorded' if env is None else f'jax {env["jax"]} on {env["backend"]} ({env["device"]})'
      seen += [label] if label not in seen else []
  return (f' The rows were computed in {len(seen)} environments ({"; ".join(seen)}); each row of results.jsonl says '
          'which (ran_on).') if len(seen) > 1 else ''


def table_markdown(summaries: dict[tuple[str, float], Summary], grid: Grid, config: dict[str, Any],
                   note: str = '') -> str:
  """Rows: dense, then each criterion; columns: the sparsities; cells ``mean ± std (n)`` and the paper's; ``note``
  ends the caption."""
  paper = _has_paper_numbers(config)
  lines = [f'Top-1 accuracy (%) of {title(config, grid, summaries)}: mean ± sample std over seeds (n finished)'
           + ('; [paper: mean ± std] from its appendix B' if paper else '')
           + '. "k collapsed": in k of the n seeds the mask emptied layers on every path from the input to the output '
           '(layer collapse), so the network outputs a constant: those seeds count at chance accuracy '
           f'({chance_top1(config):.2f}%) in the mean and std; "k diverged": in k seeds the training loss became NaN or '
           'infinite, counted at chance alike.'
           + _references_note(grid) + note,
           '',
           '| Sparsity (%) | ' + ' | '.join(sparsity_labels(grid.sparsities)) + ' |',
           '|---' * (len(grid.sparsities) + 1) + '|']
  for criterion in (DENSE, *grid.criteria):
    cells = []
    for sparsity in grid.sparsities:
      text = format_summary(lookup(summaries, criterion, sparsity))
      if (theirs := _paper(config, criterion, sparsity)) is not None:
        text += f' [paper: {theirs[0]:.1f} ± {theirs[1]:.1f}]'
      cells.append(text)
    lines.append(f'| {criterion} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def _number(value: float | None) -> str:
  return '' if value is None else f'{value:.4f}'


def table_csv(summaries: dict[tuple[str, float], Summary], grid: Grid, config: dict[str, Any]) -> str:
  """The markdown table in numbers: per sparsity label, ``mean``, ``std``, ``n``, ``collapsed`` and ``diverged`` (of
  the n, counted at chance in the mean and std) and the paper's mean and std where it has them."""
  paper = _has_paper_numbers(config)
  fields = ('mean', 'std', 'n', 'collapsed', 'diverged') + (('paper mean', 'paper std') if paper else ())
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator='\n')
  labels = sparsity_labels(grid.sparsities)
  writer.writerow(['criterion'] + [f'{label} {field}' for label in labels for field in fields])
  for criterion in (DENSE, *grid.criteria):
    row = [criterion]
    for sparsity in grid.sparsities:
      summary = lookup(summaries, criterion, sparsity)
      row += [_number(summary and summary.mean), _number(summary and summary.std), summary.n if summary else 0,
              summary.collapsed if summary else 0, summary.diverged if summary else 0]
      if paper:
        theirs = _paper(config, criterion, sparsity)
        row += [_number(theirs and theirs[0]), _number(theirs and theirs[1])]
    writer.writerow(row)
  return buffer.getvalue()
