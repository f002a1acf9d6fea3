"""What a mask keeps and what a run reports: sparsity per layer, the results table, the dense-vs-compact costs."""

from __future__ import annotations

import json
import pathlib
from typing import Any

from chex import ArrayTree

from prospr_jax.channels import groups
from prospr_jax.harness import cost
from prospr_jax.harness.records import PruneSpec
from prospr_jax.harness.setup import Setup
from prospr_jax.models import plans
from prospr_jax.sparsity import SparsityReport, percent, sparsity_report


def reports(structured: bool, setup: Setup, mask: ArrayTree) -> tuple[SparsityReport, SparsityReport]:
  """``(mask report, weight report)``: per layer the kept entries (channels, when structured) and the kept weights."""
  return mask_reports(setup.model, setup.variables['params'], mask, structured)


def mask_reports(model, params: ArrayTree, mask: ArrayTree, structured: bool) -> tuple[SparsityReport, SparsityReport]:
  """As ``reports``; a channel mask's weight report counts every kernel entry its channels own (readers too)."""
  if not structured:
    report = sparsity_report(mask, params)
    return report, report
  kernels = groups.kernel_mask(plans.channel_plan(model, params), mask, params)
  return sparsity_report(mask), sparsity_report(kernels, params)


def mask_results(pruning: PruneSpec, setup: Setup, mask: ArrayTree) -> dict[str, Any]:
  """What the mask keeps: weights, and channels when structured."""
  entries, weights = reports(pruning.structured, setup, mask)
  results = {'criterion': pruning.criterion, 'sparsity': pruning.sparsity,
             'weight_sparsity': 1.0 - weights.density, 'kept_weights': weights.kept}
  if pruning.structured:
    results.update(channel_sparsity=1.0 - entries.density, kept_channels=entries.kept)
  return results


def print_costs(workdir: pathlib.Path) -> None:
  """The dense and the compact network's costs side by side, if this run compacted."""
  path = workdir / cost.COST_FILE
  if path.exists():
    costs = json.loads(path.read_text())
    print(f'dense against compact on {costs["device"]} (train step at batch {costs["batch_size"]}):\n'
          + cost.comparison_table({name: costs[name] for name in ('dense', 'compact')}), flush=True)


def format_results(pruning: PruneSpec, label: str, num_epochs: int, results: dict[str, Any],
                   name: str | None = None) -> str:
  """The run's table (``label``: '<model> on <dataset>'): each network's weight sparsity (and channel sparsity,
  when structured), top-1 and top-5."""
  if name is None:
    name = pruning.criterion + ('' if pruning.ablation == 'none' else f' ({pruning.ablation})')
  channels = pruning.structured and 'criterion' in results
  rows = [('dense', 0.0, 0.0, results['dense'])] if 'dense' in results else []
  rows.append((name, results['weight_sparsity'], pruning.sparsity, results['pruned']))
  header = f'{"network":<24} {"weights":>8} ' + (f'{"channels":>8} ' if channels else '') + f'{"top-1":>8} {"top-5":>8}'
  lines = [f'{label}, {num_epochs} epochs; sparsity of the prunable weights'
           + (' and of the channels' if channels else ''), header]
  for row_name, weights, channel, row in rows:
    lines.append(f'{row_name:<24} {percent(weights):>8} ' + (f'{percent(channel):>8} ' if channels else '')
                 + f'{row["eval_top1"]:>8.2%} {row["eval_top5"]:>8.2%}')
  return '\n'.join(lines)
