"""A sweep's statistics: a seed whose mask left no path from input to output, or whose training diverged, counts at
chance accuracy, in the table and the figure."""

import csv
import io
import json
import statistics

import pytest

from prospr_jax import files
from prospr_jax.sweep import figure, grid as grid_lib, record, runner, table

CONFIG = {'model': 'lenet300_100', 'dataset': 'fashion_mnist', 'num_epochs': 20}  # 10 classes: chance is 10%
GRID = grid_lib.Grid(('grasp', 'snip'), (0.9, 0.995), 3)


def row(criterion, sparsity, seed, top1):
  """A ``results.jsonl`` row; ``top1=None`` is a seed whose mask left no path from input to output (collapsed)."""
  collapsed = {'collapsed': 'magnitude would remove every weight of Dense_0'} if top1 is None else {}
  return {'criterion': criterion, 'sparsity': sparsity, 'seed': seed, 'top1': top1, **collapsed}


ROWS = [row('dense', 0.0, seed, 0.8943) for seed in range(3)] + [
    row('grasp', 0.9, 0, 0.89), row('grasp', 0.9, 1, 0.88), row('grasp', 0.9, 2, 0.885),
    row('grasp', 0.995, 0, 0.333), row('grasp', 0.995, 1, None), row('grasp', 0.995, 2, None),  # 2 of 3 collapsed
    row('snip', 0.9, 0, 0.89), row('snip', 0.9, 1, 0.891), row('snip', 0.9, 2, 0.892),
    row('snip', 0.995, 0, None), row('snip', 0.995, 1, None), row('snip', 0.995, 2, None),  # every seed collapsed
]


def test_chance_is_one_over_the_number_of_classes_of_the_dataset():
  assert table.chance_top1(CONFIG) == 10.0
  assert table.chance_top1({'dataset': 'cifar100'}) == 1.0


def test_a_collapsed_seed_counts_at_chance_in_the_mean_and_std():
  summary = table.summarize(ROWS, table.chance_top1(CONFIG))[('grasp', 0.995)]
  at_chance = [33.3, 10.0, 10.0]
  assert (summary.n, summary.collapsed) == (3, 2)
  assert (summary.mean, summary.std) == (pytest.approx(statistics.fmean(at_chance)),
                                         pytest.approx(statistics.stdev(at_chance)))


def test_a_cell_with_collapsed_seeds_says_how_many_beside_its_mean_and_std():
  summaries = table.summarize(ROWS, table.chance_top1(CONFIG))
  assert table.format_summary(summaries[('grasp', 0.995)]) == '17.77 ± 13.45 (n=3, 2 collapsed)'
  assert table.format_summary(summaries[('snip', 0.995)]) == '10.00 ± 0.00 (n=3, 3 collapsed)'
  assert table.format_summary(summaries[('grasp', 0.9)]) == '88.50 ± 0.50 (n=3)'
  markdown = table.table_markdown(summaries, GRID, CONFIG)
  assert '| grasp | 88.50 ± 0.50 (n=3) | 17.77 ± 13.45 (n=3, 2 collapsed) |' in markdown
  assert 'count at chance accuracy (10.00%) in the mean and std' in markdown


def test_a_diverged_seed_counts_at_chance_and_is_named_apart_from_a_collapsed_one():
  rows = [row('snip', 0.9, 0, 0.89), row('snip', 0.9, 1, None),
          {'criterion': 'snip', 'sparsity': 0.9, 'seed': 2, 'top1': None, 'diverged': 'the loss became NaN at step 7'}]
  summary = table.summarize(rows, 10.0)[('snip', 0.9)]
  assert (summary.n, summary.collapsed, summary.diverged) == (3, 1, 1)
  assert summary.mean == pytest.approx(statistics.fmean([89.0, 10.0, 10.0]))
  assert table.format_summary(summary) == '36.33 ± 45.61 (n=3, 1 collapsed, 1 diverged)'


def test_the_title_says_how_many_seeds_finished_where_a_point_has_fewer_than_asked():
  summaries = table.summarize(ROWS, table.chance_top1(CONFIG))
  assert table.title(CONFIG, GRID, summaries) == 'lenet300_100 on fashion_mnist, 20 epochs, 3 seeds'
  cut = table.summarize([r for r in ROWS if r['seed'] == 0 or r['criterion'] == 'grasp'], table.chance_top1(CONFIG))
  assert table.title(CONFIG, GRID, cut) == 'lenet300_100 on fashion_mnist, 20 epochs, 3 seeds asked, 1 to 3 finished ' \
                                          'per point'
  assert '3 seeds asked, 1 finished per point' in table.table_markdown(
      table.summarize([r for r in ROWS if r['seed'] == 0], table.chance_top1(CONFIG)), GRID, CONFIG)


def test_a_table_of_rows_from_several_environments_says_so():
  cpu = {'jax': '0.10.2', 'jaxlib': '0.10.2', 'backend': 'cpu', 'device': 'cpu'}
  gpu = {'jax': '0.12.1', 'jaxlib': '0.12.1', 'backend': 'gpu', 'device': 'NVIDIA H100 80GB HBM3'}
  assert table.environments_note([{'ran_on': [cpu]}, {'ran_on': [cpu]}]) == ''
  note = table.environments_note([{'ran_on': [cpu]}, {'ran_on': [cpu, gpu]}, {}])
  assert note == (' The rows were computed in 3 environments (jax 0.10.2 on cpu (cpu); jax 0.12.1 on gpu (NVIDIA H100 '
                  '80GB HBM3); not recorded); each row of results.jsonl says which (ran_on).')
  assert table.table_markdown(table.summarize(ROWS, 10.0), GRID, CONFIG, note).split('\n')[0].endswith('(ran_on).')


def test_the_csv_holds_the_chance_counted_mean_and_std_and_the_collapsed_count():
  summaries = table.summarize(ROWS, table.chance_top1(CONFIG))
  rows = {r['criterion']: r for r in csv.DictReader(io.StringIO(table.table_csv(summaries, GRID, CONFIG)))}
  assert [rows['grasp'][f'99.5 {field}'] for field in ('mean', 'std', 'n', 'collapsed')] == [
      '17.7667', '13.4523', '3', '2']
  assert [rows['snip'][f'99.5 {field}'] for field in ('mean', 'std', 'n', 'collapsed')] == ['10.0000', '0.0000', '3', '3']


def test_the_figure_plots_the_chance_counted_mean_and_crosses_the_point():
  summaries = table.summarize(ROWS, table.chance_top1(CONFIG))
  fig = figure.draw_figure(summaries, GRID, CONFIG)
  full = fig.axes[0]
  lines = {line.get_label(): line for line in full.get_lines()}
  assert list(lines['grasp'].get_ydata()) == [pytest.approx(88.5), pytest.approx(17.7667, abs=1e-4)]
  assert list(lines['snip'].get_ydata())[-1] == 10.0 and set(lines['chance (10%)'].get_ydata()) == {10.0}
  crossed = sorted(tuple(point) for c in full.collections if c.get_gid() == figure.COLLAPSED
                   for point in c.get_offsets().tolist())
  x = figure.sparsity_position(0.995)
  assert crossed == [(pytest.approx(x), 10.0), (pytest.approx(x), pytest.approx(17.7667, abs=1e-4))]  # those alone


def test_tabulate_results_rebuilds_a_results_folder_from_its_rows_alone(tmp_path):
  files.write_json(tmp_path / record.SWEEP_FILE, {'base_config': CONFIG, 'grid': GRID.to_dict()})
  (tmp_path / runner.RESULTS_FILE).write_text(''.join(json.dumps(r) + '\n' for r in ROWS))
  summaries = runner.tabulate_results(tmp_path, with_figure=False)
  assert summaries[('grasp', 0.995)].collapsed == 2
  assert '17.77 ± 13.45 (n=3, 2 collapsed)' in (tmp_path / 'table.md').read_text()
  assert (tmp_path / runner.RESULTS_FILE).read_text().count('\n') == len(ROWS)  # the rows are kept as they are
