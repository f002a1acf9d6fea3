"""The references that prune after training: the mask of the trained weights, where retraining starts, the sweep."""

import json
import logging
import shutil

import jax
import numpy as np
import pytest

from prospr_jax import mask_files, masks as masks_lib, sweep, topk
from prospr_jax.criteria import registry
from prospr_jax.harness import seeds, train_loop, train_steps, validation
from prospr_jax.harness.records import Recipe, Running
from prospr_jax.harness.setup import make_setup
from prospr_jax.runtime import checkpointing
from prospr_jax.sweep import after_training, figure, grid as grid_lib, table

CRITERIA, SPARSITY = 'magnitude_after_training,lottery_rewind_one_shot', 0.9
MAT, LTR = sweep.Cell('magnitude_after_training', SPARSITY, 0), sweep.Cell('lottery_rewind_one_shot', SPARSITY, 0)
DENSE = sweep.Cell('dense', 0.0, 0)


def base_config():
  from configs import default
  config = default.get_config()
  config.num_epochs = 2
  config.lr_milestones = (1,)  # the learning rate drops after epoch 1: lottery_rewind_one_shot must go on from the drop
  return config


@pytest.fixture(scope='module')
def setup():
  return make_setup(base_config())


@pytest.fixture(scope='module')
def steps(setup):
  return train_loop.recipe_steps(Recipe.of(base_config()), setup)[0]


@pytest.fixture(scope='module')
def swept(tmp_path_factory):
  """The tiny sweep (dense, both references at 90%, seed 0) run once; what each ``train_loop.train`` call started from."""
  workdir = tmp_path_factory.mktemp('after_training')
  starts, real_train = {}, train_loop.train

  def spy(recipe, running, setup, mask, train_dir, title='', variables=None, start_step=0):
    starts[train_dir] = (jax.device_get(setup.variables if variables is None else variables), start_step)
    return real_train(recipe, running, setup, mask, train_dir, title=title, variables=variables,
                      start_step=start_step)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(train_loop, 'train', spy)
    outcome = sweep.run_sweep(base_config(), CRITERIA, str(SPARSITY), 1, workdir)
  return workdir, outcome, starts


@pytest.fixture(scope='module')
def one_epoch(setup, steps, tmp_path_factory):
  """The state after one epoch of an independent dense run of seed 0 (trained here, not by the sweep)."""
  config = base_config()
  config.num_epochs = 1
  directory = tmp_path_factory.mktemp('one_epoch')
  train_loop.train(Recipe.of(config), Running.of(config), setup, masks_lib.all_ones_mask(setup.variables['params']),
                   directory)
  return restore_state(setup, directory / 'checkpoints', steps)


def restore_state(setup, directory, step, mask=None):
  """The trainer's checkpoint at ``step``, restored by hand (not through ``after_training``)."""
  config = base_config()
  _, (_, optimizer, _, _) = train_loop.recipe_steps(Recipe.of(config), setup)
  mask = masks_lib.all_ones_mask(setup.variables['params']) if mask is None else mask
  template = train_steps.create_train_state(setup.variables, mask, optimizer, seeds.train_dropout(config.seed))
  checkpointer = checkpointing.Checkpointer(directory)
  try:
    return checkpointer.restore(template, template.params, step=step)[0]
  finally:
    checkpointer.close()


def assert_trees_equal(ours, theirs):
  """Bit-exact equality, leaf by leaf, of two trees of the same structure."""
  assert jax.tree.structure(ours) == jax.tree.structure(theirs)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    assert np.array_equal(np.asarray(a), np.asarray(b))


def cell_mask(workdir, cell, setup):
  return mask_files.load_masks(cell.directory(workdir) / 'mask.npz', setup.variables['params'])


def metrics(workdir, cell):
  path = cell.directory(workdir) / 'pruned' / 'metrics.jsonl'
  return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_the_mask_is_the_global_magnitude_top_k_of_the_trained_dense_weights(swept, setup, steps):
  workdir, outcome, _ = swept
  assert (outcome.total, outcome.ran, outcome.remaining) == (3, 3, 0)
  trained = restore_state(setup, DENSE.directory(workdir) / 'checkpoints', 2 * steps).params
  mask = cell_mask(workdir, MAT, setup)
  assert_trees_equal(mask, cell_mask(workdir, LTR, setup))  # the same one-shot mask for both references
  kept, pruned, total = [], [], 0
  for path, weights in jax.tree_util.tree_leaves_with_path(trained):
    keep = dict(masks_lib.named_leaves(mask)).get(masks_lib.layer_name(path))
    assert (keep is None) == (np.ndim(weights) < 2)  # kernels only: biases and BatchNorm are never pruned
    if keep is not None:
      keep, magnitude = np.asarray(keep), np.abs(np.asarray(weights))
      kept.append(magnitude[keep])
      pruned.append(magnitude[~keep])
      total += keep.size
  kept, pruned = np.concatenate(kept), np.concatenate(pruned)
  assert kept.size == topk.num_to_keep(total, SPARSITY) and kept.min() > pruned.max()  # global top-k
  rows = {row['criterion']: row for row in map(json.loads, (workdir / 'results.jsonl').read_text().splitlines())}
  assert rows['magnitude_after_training']['kept_weights'] == rows['lottery_rewind_one_shot']['kept_weights'] == kept.size


@pytest.mark.slow
def test_magnitude_after_training_retrains_from_the_trained_weights_with_the_whole_schedule(swept, setup, steps):
  workdir, _, starts = swept
  variables, start_step = starts[MAT.directory(workdir) / 'pruned']
  final = restore_state(setup, DENSE.directory(workdir) / 'checkpoints', 2 * steps)
  assert start_step == 0
  assert_trees_equal(variables['params'], final.params)  # masked by the trainer, as for any criterion
  assert_trees_equal(variables['batch_stats'], final.batch_stats)
  assert [(row['epoch'], row['learning_rate']) for row in metrics(workdir, MAT)] == [(1, 0.1), (2, pytest.approx(0.01))]


@pytest.mark.slow
def test_lottery_rewind_one_shot_starts_from_epoch_1_of_an_independent_dense_run(swept, one_epoch, steps):
  workdir, _, starts = swept
  variables, start_step = starts[LTR.directory(workdir) / 'pruned']
  assert start_step == steps  # the schedule and the data order go on from the end of epoch 1
  assert_trees_equal(variables['params'], one_epoch.params)
  assert_trees_equal(variables['batch_stats'], one_epoch.batch_stats)
  assert [(row['epoch'], row['learning_rate']) for row in metrics(workdir, LTR)] == [(2, pytest.approx(0.01))]


@pytest.mark.slow
def test_the_rewind_point_is_recomputed_when_the_dense_cell_lacks_it_and_then_cached(swept, setup, one_epoch, steps,
                                                                                      tmp_path, monkeypatch):
  dense = tmp_path / 'dense'
  shutil.copytree(DENSE.directory(swept[0]), dense)
  shutil.rmtree(dense / 'checkpoints' / str(steps))  # as in a dense run of more than two epochs
  scratch = tmp_path / 'cell' / after_training.REWIND_SCRATCH
  assert_trees_equal(after_training.rewind_variables(base_config(), setup, dense, scratch),
                     {'params': one_epoch.params, 'batch_stats': one_epoch.batch_stats})
  assert (dense / after_training.REWIND_FILE).exists() and not scratch.exists()
  monkeypatch.setattr(train_loop, 'train', lambda *args, **kwargs: pytest.fail('the cached rewind point was not used'))
  assert_trees_equal(after_training.rewind_variables(base_config(), setup, dense, scratch),
                     {'params': one_epoch.params, 'batch_stats': one_epoch.batch_stats})


@pytest.mark.slow
def test_pruned_weights_are_exactly_zero_at_the_end(swept, setup, steps):
  workdir = swept[0]
  for cell in (MAT, LTR):
    mask = cell_mask(workdir, cell, setup)
    final = restore_state(setup, cell.directory(workdir) / 'pruned' / 'checkpoints', 2 * steps, mask)
    params = dict(masks_lib.named_leaves(final.params))
    for name, keep in masks_lib.named_leaves(mask):
      keep, weights = np.asarray(keep), np.asarray(params[name])
      assert np.all(weights[~keep] == 0.0) and np.count_nonzero(weights[keep]) == keep.sum(), (cell, name)


@pytest.mark.slow
def test_the_sweep_tabulates_and_plots_the_references_apart_from_the_at_init_criteria(swept):
  workdir = swept[0]
  rows = {row['criterion']: row for row in map(json.loads, (workdir / 'results.jsonl').read_text().splitlines())}
  for name in ('magnitude_after_training', 'lottery_rewind_one_shot'):
    row = rows[name]
    assert row['cell'] == f'cells/{name}/sparsity_0.900/seed_0' and 0 <= row['top1'] <= 1
    assert row['pruning_seconds'] > 0 and row['training_seconds'] > 0
    assert row['weight_sparsity'] == pytest.approx(SPARSITY, abs=1e-3)
    assert 'precision' not in row and 'scoring_conv' not in row  # nothing was scored at initialisation
    record = json.loads((workdir / row['cell'] / 'pruning.json').read_text())
    assert record['computed_from'] == 'the trained weights' and 'prune' not in record
  markdown = (workdir / 'table.md').read_text()
  assert '| magnitude_after_training | ' in markdown and '| lottery_rewind_one_shot | ' in markdown
  assert ('Pruned after training (references: magnitude pruning of the trained dense network of each seed, not at '
          'initialization): magnitude_after_training (one shot, retrained from the trained weights); '
          'lottery_rewind_one_shot (one shot, rewound to epoch 1).') in markdown
  base, grid = sweep.record.read_sweep(workdir)
  fig = figure.draw_figure(sweep.aggregate(workdir, with_figure=False), grid, base)
  lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
  assert lines['lottery_rewind_one_shot (after training)'].get_linestyle() == '--'
  assert list(lines['lottery_rewind_one_shot (after training)'].get_ydata()) == [
      100 * rows['lottery_rewind_one_shot']['top1']]


@pytest.mark.slow
def test_a_rerun_skips_finished_cells_and_a_killed_cell_resumes_from_its_checkpoint(swept, steps, tmp_path, caplog):
  workdir = swept[0]
  assert sweep.run_sweep(base_config(), CRITERIA, str(SPARSITY), 1, workdir).ran == 0
  copy = tmp_path / 'copy'
  shutil.copytree(workdir, copy)
  cell_dir = MAT.directory(copy)
  (cell_dir / 'results.json').unlink()  # killed in epoch 2: the checkpoint of epoch 1 is the newest
  shutil.rmtree(cell_dir / 'pruned' / 'checkpoints' / str(2 * steps))
  logger = logging.getLogger(train_loop.__name__)
  logger.addHandler(caplog.handler)
  try:
    with caplog.at_level(logging.INFO, logger=train_loop.__name__):
      outcome = sweep.run_sweep(base_config(), CRITERIA, str(SPARSITY), 1, copy)
  finally:
    logger.removeHandler(caplog.handler)
  assert (outcome.ran, outcome.remaining) == (1, 0)
  assert f'Resumed from the checkpoint at step {steps} (epoch 1)' in caplog.text
  ours, theirs = (json.loads((MAT.directory(w) / 'results.json').read_text())['pruned'] for w in (copy, workdir))
  assert {**ours, 'images_per_second': None} == {**theirs, 'images_per_second': None}  # bit for bit, but the speed


def test_a_reference_cell_is_refused_in_one_line_until_the_dense_cell_of_its_seed_has_finished(tmp_path):
  overrides = ['--config.num_epochs=2', '--config.lr_milestones=(1,)']
  printed = sweep.pending_commands(base_config(), sweep.make_grid('lottery_rewind_one_shot', '0.9', 1), tmp_path,
                                   'configs/default.py', overrides)
  assert printed[0].endswith('--only_cell=dense,0.0,0') and printed[2].endswith('--aggregate_only')
  assert printed[1] == ('python sweep.py --config configs/default.py --config.num_epochs=2 '
                        f"'--config.lr_milestones=(1,)' --workdir {tmp_path} --only_cell=lottery_rewind_one_shot,0.9,0")
  with pytest.raises(after_training.MissingDenseRun) as refusal:
    sweep.run_only_cell(base_config(), 'lottery_rewind_one_shot,0.9,0', tmp_path)
  message = str(refusal.value)
  assert '\n' not in message and f'the dense cell {DENSE.directory(tmp_path)} has not finished' in message
  assert not (LTR.directory(tmp_path) / 'results.json').exists()
  with pytest.raises(ValueError, match=r'--only_cell: snip at 90.0% sparsity, seed 0 is not a cell of the sweep'):
    sweep.run_only_cell(base_config(), 'snip,0.9,0', tmp_path)


def test_the_references_are_criteria_of_the_sweep_only_and_refuse_what_they_cannot_run():
  assert sweep.parse_criteria('snip,lottery_rewind_one_shot,magnitude_after_training,lottery_rewind_iterative') == (
      'snip', 'lottery_rewind_one_shot', 'magnitude_after_training', 'lottery_rewind_iterative')
  assert sweep.parse_criteria('all') == registry.UNSTRUCTURED  # at-init, unstructured criteria only
  assert not set(after_training.REFERENCES) & set(registry.CRITERIA)
  one_epoch = base_config()
  one_epoch.num_epochs, one_epoch.lr_milestones = 1, ()
  sweep.validate_sweep(one_epoch, sweep.make_grid('magnitude_after_training', '0.9', 1))
  for name in ('lottery_rewind_one_shot', 'lottery_rewind_iterative'):
    with pytest.raises(validation.ConfigError, match=f'{name} rewinds to the end of epoch 1.*must be >= 2, got 1'):
      sweep.validate_sweep(one_epoch, sweep.make_grid(name, '0.9', 1))
  structured = base_config()
  structured.prune.structured = True
  with pytest.raises(validation.ConfigError, match='prunes single weights'):
    sweep.validate_sweep(structured, sweep.make_grid('magnitude_after_training', '0.9', 1))


def test_a_dense_run_of_another_recipe_is_refused_naming_the_fields(tmp_path):
  dense = base_config()
  dense.learning_rate = 0.05
  (tmp_path / 'config.json').write_text(json.dumps(dense.to_dict()))
  config = sweep.cell_config(base_config(), LTR)
  with pytest.raises(validation.ConfigError, match=r'trained with another config \(learning_rate differ\)'):
    after_training.check_dense_config(config, tmp_path)
  (tmp_path / 'config.json').write_text(json.dumps(sweep.cell_config(base_config(), DENSE).to_dict()))
  after_training.check_dense_config(config, tmp_path)


def test_the_table_shows_the_papers_numbers_beside_the_reference_they_belong_to():
  grid = grid_lib.Grid(('magnitude_after_training', 'lottery_rewind_one_shot', 'lottery_rewind_iterative'),
                       (sweep.PAPER_SPARSITIES[0],), 1)
  summaries = {(name, grid.sparsities[0]): table.Summary(93.0, None, 1) for name in grid.criteria}
  vgg = table.table_markdown(summaries, grid, {'model': 'vgg16', 'dataset': 'cifar10', 'num_epochs': 160})
  assert '| lottery_rewind_iterative | 93.00 (n=1) [paper: 93.5 ± 0.1] |' in vgg  # the paper's LTR is iterative
  assert '| lottery_rewind_one_shot | 93.00 (n=1) |' in vgg
  resnet = table.table_markdown({}, grid, {'model': 'resnet20', 'dataset': 'cifar10', 'num_epochs': 160})
  assert '| magnitude_after_training | — [paper: 92.2 ± 0.3] |' in resnet
