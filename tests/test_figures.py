"""What a reader sees: figures that show the criteria apart in stable colours, plots and log lines that say what ran."""

import logging

import pytest

from prospr_jax.criteria import registry
from prospr_jax.harness import experiment, plots
from prospr_jax.sweep import after_training, figure, grid as grid_lib, table

CONFIG = {'model': 'lenet5', 'dataset': 'fashion_mnist', 'num_epochs': 10}


def lenet5_like():
  """The committed LeNet-5 grid's shape: the criteria within half a point, random's band over tens of points."""
  grid = grid_lib.Grid(('prospr', 'snip', 'synflow', 'random'), (0.914101, 0.981986), 3)
  summaries = {('dense', 0.0): table.Summary(91.38, 0.21, 3),
               ('prospr', 0.914101): table.Summary(90.53, 0.15, 3), ('prospr', 0.981986): table.Summary(89.01, 0.15, 3),
               ('snip', 0.914101): table.Summary(90.41, 0.28, 3), ('snip', 0.981986): table.Summary(88.64, 0.47, 3),
               ('synflow', 0.914101): table.Summary(90.66, 0.21, 3), ('synflow', 0.981986): table.Summary(88.45, 1.2, 3),
               ('random', 0.914101): table.Summary(88.91, 0.18, 3), ('random', 0.981986): table.Summary(55.94, 39.87, 3)}
  return summaries, grid


def test_a_second_panel_zooms_on_the_better_half_of_the_criteria_with_random_drawn_but_not_setting_its_axis():
  summaries, grid = lenet5_like()
  fig = figure.draw_figure(summaries, grid, CONFIG)
  assert len(fig.axes) == 2
  low, high = fig.axes[1].get_ylim()
  assert 87.9 < low < 88.17 and 91.59 < high < 92  # the bands of the leading two per sparsity and dense, no more
  assert fig.axes[0].get_ylim()[0] < 16.07 and fig.axes[0].get_ylim()[1] > 95.81  # the full panel: every band
  drawn = {text.get_label() for text in fig.axes[1].containers}
  assert 'random' in drawn and 'synflow' in drawn  # every criterion is on the zoomed panel too


def test_no_second_panel_where_the_criteria_spread_over_the_whole_range():
  grid = grid_lib.Grid(('prospr', 'random'), (0.9, 0.99), 3)
  summaries = {('dense', 0.0): table.Summary(90.0, 0.1, 3), ('prospr', 0.9): table.Summary(89.0, 0.2, 3),
               ('prospr', 0.99): table.Summary(30.0, 2.0, 3), ('random', 0.9): table.Summary(80.0, 1.0, 3),
               ('random', 0.99): table.Summary(10.0, 0.0, 3, collapsed=3)}
  assert figure.zoom_range(summaries, grid, 10.0) is None
  assert len(figure.draw_figure(summaries, grid, CONFIG).axes) == 1


def test_every_criterion_and_reference_has_its_own_colour():
  names = [*registry.CRITERIA, *after_training.REFERENCES]
  colours = [figure.colour(name) for name in names]
  assert len(set(colours)) == len(names), dict(zip(names, colours))
  assert figure.colour('an_unknown_criterion') == figure.colour('an_unknown_criterion')


def test_a_criterion_has_the_same_colour_in_every_figure_and_the_references_none_of_the_others():
  summaries, _ = lenet5_like()
  many = grid_lib.Grid((*registry.UNSTRUCTURED, *after_training.REFERENCES), (0.914101,), 3)
  few = grid_lib.Grid(('snip', 'prospr', 'magnitude_after_training'), (0.914101,), 3)
  every = {(c, 0.914101): table.Summary(90.0, 0.1, 3) for c in many.criteria}

  def colours(grid):
    lines = figure.draw_figure({**summaries, **every}, grid, CONFIG).axes[0].get_lines()
    return {line.get_label().replace(' (after training)', ''): line.get_color() for line in lines}
  in_many, in_few = colours(many), colours(few)
  assert all(in_few[name] == in_many[name] == figure.colour(name) for name in few.criteria)
  assert len({in_many[name] for name in many.criteria}) == len(many.criteria)


@pytest.mark.slow
def test_the_layer_density_of_a_channel_mask_is_labelled_channels(captured):
  assert captured['structured']['layer_density.png'].axes[0].get_ylabel() == 'channels kept (%)'
  assert captured['unstructured']['layer_density.png'].axes[0].get_ylabel() == 'weights kept (%)'


@pytest.mark.slow
def test_learning_curves_name_the_network_criterion_and_sparsity_and_mark_every_epoch(captured):
  curves = captured['unstructured']['pruned/learning_curves.png']
  assert curves._suptitle.get_text() == 'small_cnn on digits: pruned network (prospr at 90.0% weight sparsity)'
  assert all(line.get_marker() == 'o' for ax in curves.axes for line in ax.get_lines())  # one epoch is a point


@pytest.mark.slow
def test_every_epoch_log_line_names_the_network_it_trains(captured):
  lines = [line for line in captured['log'] if line.startswith('epoch ')]
  assert [line.split(': {')[0] for line in lines] == [
      'epoch 1, pruned network (prospr at 90.0% weight sparsity)', 'epoch 1, dense network']


@pytest.fixture(scope='module')
def captured(tmp_path_factory):
  """The pruning of a structured run, and one epoch of an unstructured run and its dense network: each figure saved,
  by path under its workdir, and the log lines. (A compact network's title: test_experiment's structured run.)"""
  from configs import default
  figures, messages = {}, []
  handler = logging.Handler()
  handler.emit = lambda record: messages.append(record.getMessage())
  logger = logging.getLogger('prospr_jax')
  saved, level = plots._save, logger.level  # pylint: disable=protected-access
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  try:
    for name, structured, sparsity, epochs in (('structured', True, 0.5, 0), ('unstructured', False, 0.9, 1)):
      workdir = tmp_path_factory.mktemp(name)
      plots._save = lambda fig, path, workdir=workdir, name=name: figures.setdefault(name, {}).__setitem__(
          str(path.relative_to(workdir)), fig)
      config = default.get_config()
      config.num_epochs, config.lr_milestones = epochs, ()
      config.prune.update(structured=structured, sparsity=sparsity, compact=False, num_steps=1, batch_size=16)
      experiment.prune_and_train(config, workdir)
  finally:
    plots._save = saved  # pylint: disable=protected-access
    logger.removeHandler(handler)
    logger.setLevel(level)
  return {**figures, 'log': messages}
