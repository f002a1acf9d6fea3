"""The iterative lottery ticket rewinding reference: rounds of 20%, monotone masks, rewinding, one cell per round."""

import json
import math
import shutil

import jax
import numpy as np
import pytest
from test_after_training import assert_trees_equal, base_config, restore_state

from prospr_jax import mask_files, masks as masks_lib, sweep, topk
from prospr_jax.harness import train_loop
from prospr_jax.harness.records import Recipe
from prospr_jax.harness.setup import make_setup
from prospr_jax.sweep import after_training, iterative_rewinding

NAME = after_training.LOTTERY_REWIND_ITERATIVE
GRID = '0.36,0.5'  # round 2, and 50% between rounds 3 (48.8%) and 4: rounds 20%, 36%, 48.8%, then a shorter one
ROUNDS = (0.2, 0.36, 0.488, 0.5)
DENSE = sweep.Cell('dense', 0.0, 0)


def cell(sparsity):
  return sweep.Cell(NAME, sparsity, 0)


@pytest.fixture(scope='module')
def setup():
  return make_setup(base_config())


@pytest.fixture(scope='module')
def steps(setup):
  return train_loop.recipe_steps(Recipe.of(base_config()), setup)[0]


def spied_sweep(workdir, sparsities=GRID):
  """Run the sweep; return its outcome and, per ``train_loop.train`` call in order, (folder, variables, start step)."""
  calls, real_train = [], train_loop.train

  def spy(recipe, running, setup, mask, train_dir, title='', variables=None, start_step=0):
    calls.append((train_dir, jax.device_get(setup.variables if variables is None else variables), start_step))
    return real_train(recipe, running, setup, mask, train_dir, title=title, variables=variables,
                      start_step=start_step)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(train_loop, 'train', spy)
    outcome = sweep.run_sweep(base_config(), NAME, sparsities, 1, workdir)
  return outcome, calls


@pytest.fixture(scope='module')
def swept(tmp_path_factory):
  """The tiny sweep (dense, the iterative reference at 36% and 50%, seed 0) run once."""
  workdir = tmp_path_factory.mktemp('iterative')
  outcome, calls = spied_sweep(workdir)
  return workdir, outcome, calls


def mask_of(workdir, sparsity, setup):
  return mask_files.load_masks(cell(sparsity).directory(workdir) / 'mask.npz', setup.variables['params'])


def flat(mask):
  return np.concatenate([np.ravel(m) for _, m in masks_lib.named_leaves(mask)])


def final_params(workdir, the_cell, setup, steps, mask=None):
  directory = the_cell.directory(workdir) / ('checkpoints' if the_cell.is_dense else 'pruned/checkpoints')
  return restore_state(setup, directory, 2 * steps, mask).params


def test_the_papers_grid_is_the_first_18_rounds_and_other_sparsities_end_with_a_shorter_round():
  assert iterative_rewinding.chain(sweep.PAPER_SPARSITIES[-1]) == sweep.PAPER_SPARSITIES
  assert all(map(iterative_rewinding.is_full_round, sweep.PAPER_SPARSITIES))
  assert iterative_rewinding.chain(0.5) == ROUNDS and not iterative_rewinding.is_full_round(0.5)
  assert iterative_rewinding.chain(0.1) == (0.1,) and iterative_rewinding.previous_round_sparsity(0.2) is None
  assert iterative_rewinding.kept_after(0.36, 801, 1000) == 801 - 161  # ceil(0.2 * 801) = 161 removed
  assert iterative_rewinding.kept_after(0.5, 512, 1000) == 500  # ceil(1000 * 0.5), the count of every criterion


def test_a_round_keeps_the_largest_trained_weights_among_those_the_previous_round_kept():
  params = {'a': {'kernel': np.array([[0.0, 5.0], [-3.0, 1.0]])}, 'b': {'kernel': np.array([[2.0], [-4.0]]),
                                                                          'bias': np.array([9.0])}}
  previous = {'a': {'kernel': np.array([[True, False], [True, True]])}, 'b': {'kernel': np.array([[True], [True]]),
                                                                              'bias': None}}
  mask = iterative_rewinding.round_mask(params, previous, 0.36)  # a full round: of 5 kept, ceil(0.2 * 5) = 1 goes
  assert np.array_equal(mask['a']['kernel'], [[False, False], [True, True]])  # 5.0 was pruned before: stays out
  assert np.array_equal(mask['b']['kernel'], [[True], [True]]) and mask['b']['bias'] is None


@pytest.mark.slow
def test_each_round_removes_20_percent_of_the_remaining_weights_exactly(swept, setup):
  workdir = swept[0]
  total = flat(masks_lib.all_ones_mask(setup.variables['params'])).size
  remaining = total
  for sparsity in ROUNDS[:3]:
    kept = int(flat(mask_of(workdir, sparsity, setup)).sum())
    assert kept == remaining - math.ceil(0.2 * remaining), sparsity
    remaining = kept
  assert int(flat(mask_of(workdir, 0.5, setup)).sum()) == topk.num_to_keep(total, 0.5)  # the shorter last round


@pytest.mark.slow
def test_masks_are_monotone_and_each_keeps_the_largest_weights_the_previous_round_trained(swept, setup, steps):
  workdir = swept[0]
  previous, trained = masks_lib.all_ones_mask(setup.variables['params']), final_params(workdir, DENSE, setup, steps)
  for sparsity in ROUNDS:
    mask = mask_of(workdir, sparsity, setup)
    before, now = flat(previous), flat(mask)
    assert not np.any(now & ~before), sparsity  # the kept set lies inside the previous round's
    weights = dict(masks_lib.named_leaves(trained))
    magnitude = np.abs(np.concatenate([np.ravel(weights[name]) for name, _ in masks_lib.named_leaves(mask)]))
    assert magnitude[now].min() >= magnitude[before & ~now].max(), sparsity  # global magnitude, within the kept
    previous, trained = mask, final_params(workdir, cell(sparsity), setup, steps, mask)


@pytest.mark.slow
def test_every_round_restarts_from_the_rewind_point(swept, setup, steps):
  workdir, _, calls = swept
  rewind = restore_state(setup, DENSE.directory(workdir) / 'checkpoints', steps)  # the dense run's end of epoch 1
  rounds = [(folder, variables, start) for folder, variables, start in calls if folder != DENSE.directory(workdir)]
  assert [folder for folder, _, _ in rounds] == [cell(s).directory(workdir) / 'pruned' for s in ROUNDS]
  for _, variables, start_step in rounds:
    assert start_step == steps  # the schedule and the data order go on from the end of epoch 1
    assert_trees_equal(variables['params'], rewind.params)  # masked by the trainer, as for any cell
    assert_trees_equal(variables['batch_stats'], rewind.batch_stats)


@pytest.mark.slow
def test_each_round_is_recorded_as_the_cell_of_its_sparsity(swept):
  workdir, outcome = swept[:2]
  assert (outcome.total, outcome.ran, outcome.remaining) == (3, 3, 0)  # dense and the grid's two cells
  for sparsity in ROUNDS:
    folder = cell(sparsity).directory(workdir)
    config = json.loads((folder / 'config.json').read_text())
    assert (config['criterion'], config['prune']['sparsity']) == (NAME, sparsity)
    assert json.loads((folder / 'results.json').read_text())['pruned']['epoch'] == 2
    assert json.loads((folder / 'cell.json').read_text())['seconds'] > 0
  rows = [json.loads(line) for line in (workdir / 'results.jsonl').read_text().splitlines()]
  assert [(row['criterion'], row['sparsity']) for row in rows] == [('dense', 0.0), (NAME, 0.36), (NAME, 0.5)]
  assert rows[1]['cell'] == f'cells/{NAME}/sparsity_0.360/seed_0'
  outcome, calls = spied_sweep(workdir, ','.join(map(str, ROUNDS)))  # every round in the grid: already finished
  assert (outcome.total, outcome.skipped, outcome.ran, calls) == (5, 5, 0, [])
  rows = [json.loads(line) for line in (workdir / 'results.jsonl').read_text().splitlines()]
  assert [row['sparsity'] for row in rows] == [0.0, *ROUNDS]
  assert '20% of the remaining weights per round' in (workdir / 'table.md').read_text()


@pytest.mark.slow
def test_a_killed_run_resumes_from_the_last_finished_round(swept, steps, tmp_path):
  workdir = swept[0]
  copy = tmp_path / 'copy'
  shutil.copytree(workdir, copy)
  killed = cell(0.488).directory(copy)  # killed while training round 3: rounds 1 and 2 had finished
  (killed / 'results.json').unlink()
  (killed / 'cell.json').unlink()
  shutil.rmtree(killed / 'pruned' / 'checkpoints' / str(2 * steps))
  shutil.rmtree(cell(0.5).directory(copy))
  outcome, calls = spied_sweep(copy)
  assert [folder for folder, _, _ in calls] == [killed / 'pruned', cell(0.5).directory(copy) / 'pruned']
  assert (outcome.skipped, outcome.ran) == (2, 1)  # dense and 36% had finished; 50% ran, round 3 with it
  for sparsity in ROUNDS:
    ours, theirs = (json.loads((cell(sparsity).directory(w) / 'results.json').read_text()) for w in (copy, workdir))
    assert {**ours, 'pruned': {**ours['pruned'], 'images_per_second': None}} == {
        **theirs, 'pruned': {**theirs['pruned'], 'images_per_second': None}}  # bit for bit, but the speed


def test_a_round_whose_round_before_is_missing_or_collapsed_says_so_in_one_line(setup, tmp_path):
  (tmp_path / 'results.json').write_text(json.dumps({'criterion': NAME, 'sparsity': 0.2, 'kept_weights': 1}))
  with pytest.raises(after_training.MissingDenseRun) as missing:  # an imported row: no mask, no checkpoints
    iterative_rewinding.previous_round(base_config(), setup, tmp_path)
  assert '\n' not in str(missing.value) and f'missing from {tmp_path} (an imported row keeps none)' in str(missing.value)
  (tmp_path / 'results.json').write_text(json.dumps({'collapsed': 'Dense_0 emptied'}))
  with pytest.raises(topk.LayerCollapseError, match='the round before, .*, collapsed: Dense_0 emptied'):
    iterative_rewinding.previous_round(base_config(), setup, tmp_path)
  (tmp_path / 'results.json').write_text(json.dumps({'diverged': 'training diverged: NaN at step 3'}))
  with pytest.raises(train_loop.TrainingDiverged, match='the round before, .*, diverged: training diverged'):
    iterative_rewinding.previous_round(base_config(), setup, tmp_path)


def test_the_iterative_reference_is_not_run_as_a_one_shot_cell(tmp_path):
  config = sweep.cell_config(base_config(), cell(0.2))
  with pytest.raises(ValueError, match='prunes in rounds: run it with iterative_rewinding.run_round'):
    after_training.run_reference(config, tmp_path / 'cell', tmp_path / 'dense')
  with pytest.raises(ValueError, match='prunes the round at 0.2: give that cell'):
    iterative_rewinding.run_round(sweep.cell_config(base_config(), cell(0.36)), tmp_path, tmp_path, None)


def test_the_one_shot_reference_answers_to_its_former_name_with_a_future_warning():
  assert sweep.parse_criteria('lottery_rewind') == ('lottery_rewind',)
  assert after_training.is_reference('lottery_rewind') and not after_training.is_iterative('lottery_rewind')
  assert 'lottery_rewind' not in after_training.REFERENCES  # offered nowhere, only still accepted
  with pytest.warns(FutureWarning, match='lottery_rewind is deprecated: it is the one-shot reference, now '
                                         'lottery_rewind_one_shot; the paper.s iterative LTR is lottery_rewind_iterative'):
    after_training.validate_config(sweep.cell_config(base_config(), sweep.Cell('lottery_rewind', 0.9, 0)))
