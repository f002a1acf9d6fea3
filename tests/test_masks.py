"""Masks: exact counts, ties by index, monotone in sparsity, no emptied layer, apply."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import prospr_jax
from prospr_jax import masks as masks_lib, topk


def random_scores(seed=0):
  rng = np.random.default_rng(seed)
  return {'conv': {'kernel': jnp.asarray(rng.random((3, 3, 2, 5))), 'bias': None},
          'dense': {'kernel': jnp.asarray(rng.random((5, 7))), 'bias': None}}


def kept(masks):
  return sum(int(jnp.sum(m)) for m in jax.tree.leaves(masks))


def test_default_prunable_is_every_leaf_with_more_than_one_dimension():
  params = {'dense': {'kernel': jnp.ones((3, 2)), 'bias': jnp.ones(2)}, 'scale': jnp.ones(()),
            'conv': {'kernel': jnp.ones((3, 3, 1, 2))}}
  ones = prospr_jax.ones_mask(params)
  assert ones['dense']['bias'] is None and ones['scale'] is None
  assert ones['dense']['kernel'].shape == (3, 2) and ones['conv']['kernel'].shape == (3, 3, 1, 2)


def test_structured_ones_mask_has_one_entry_per_output_channel():
  ones = prospr_jax.ones_mask({'conv': {'kernel': jnp.ones((3, 3, 4, 8))}}, structured=True)
  assert ones['conv']['kernel'].shape == (8,)


@pytest.mark.parametrize('sparsity', [0.0, 0.1, 0.5, 0.9, 0.95, 0.99])
def test_global_topk_keeps_exactly_ceil_n_times_density(sparsity):
  masks = prospr_jax.global_topk_mask(random_scores(), sparsity, keep_one_per_layer=True)
  assert kept(masks) == int(np.ceil(125 * (1 - sparsity) - 1e-9))


def test_every_kept_score_is_at_least_every_pruned_score():
  scores = random_scores()
  masks = prospr_jax.global_topk_mask(scores, 0.7)
  s = np.concatenate([np.ravel(x) for x in jax.tree.leaves(scores)])
  m = np.concatenate([np.ravel(x) for x in jax.tree.leaves(masks)])
  assert s[m].min() >= s[~m].max()


def test_kept_count_is_exact_despite_float_round_off():
  # 10 * (1 - 0.7) is 3.0000000000000004 in floating point; the count is 3.
  assert topk.num_to_keep(10, 0.7) == 3
  assert topk.num_to_keep(1528, 0.9) == 153  # ceil(152.8)


def test_ties_are_broken_by_index_in_tree_order():
  scores = {'a': jnp.array([[2.0, 2.0], [2.0, 1.0]]), 'b': jnp.array([[3.0, 2.0]])}
  masks = prospr_jax.global_topk_mask(scores, 0.5)  # keep 3 of 6: 3.0, then two of the four 2.0s
  np.testing.assert_array_equal(masks['a'], [[True, True], [False, False]])
  np.testing.assert_array_equal(masks['b'], [[True, False]])


def test_all_equal_scores_keep_the_first_entries():
  masks = prospr_jax.global_topk_mask({'w': jnp.zeros((2, 5))}, 0.7)
  np.testing.assert_array_equal(masks['w'].ravel(), [True] * 3 + [False] * 7)


def test_masks_are_monotone_in_sparsity():
  scores = random_scores(1)
  previous = None
  for sparsity in np.linspace(0.0, 0.98, 15):
    masks = prospr_jax.global_topk_mask(scores, float(sparsity), keep_one_per_layer=True)
    if previous is not None:
      for new, old in zip(jax.tree.leaves(masks), jax.tree.leaves(previous)):
        assert not jnp.any(new & ~old)  # nothing pruned at a lower sparsity comes back
    previous = masks


def test_a_mask_that_empties_a_layer_is_refused_naming_the_layer():
  scores = {'big': {'kernel': jnp.full((10, 10), 1.0)}, 'small': {'kernel': jnp.full((2, 2), 0.1)}}
  with pytest.raises(ValueError, match=r'small/kernel.*keep_one_per_layer'):
    prospr_jax.global_topk_mask(scores, 0.5)


def test_keep_one_per_layer_keeps_each_layers_best_and_the_exact_count():
  scores = {'big': {'kernel': jnp.full((10, 10), 1.0)},
            'small': {'kernel': jnp.array([[0.1, 0.3], [0.2, 0.3]])}}
  masks = prospr_jax.global_topk_mask(scores, 0.5, keep_one_per_layer=True)
  np.testing.assert_array_equal(masks['small']['kernel'], [[False, True], [False, False]])
  assert kept(masks) == 52 and int(masks['big']['kernel'].sum()) == 51


def test_keep_one_per_layer_changes_nothing_when_no_layer_would_be_empty():
  scores = random_scores(2)
  for sparsity in (0.3, 0.8):
    plain = prospr_jax.global_topk_mask(scores, sparsity)
    guarded = prospr_jax.global_topk_mask(scores, sparsity, keep_one_per_layer=True)
    jax.tree.map(np.testing.assert_array_equal, plain, guarded)


def test_layerwise_topk_keeps_the_same_fraction_of_every_layer():
  masks = prospr_jax.layerwise_topk_mask(random_scores(), 0.6)
  assert int(masks['conv']['kernel'].sum()) == 36 and int(masks['dense']['kernel'].sum()) == 14


def test_layerwise_topk_takes_one_sparsity_per_layer():
  sparsity = {'conv': {'kernel': 0.5, 'bias': None}, 'dense': {'kernel': 0.0, 'bias': None}}
  masks = prospr_jax.layerwise_topk_mask(random_scores(), sparsity)
  assert int(masks['conv']['kernel'].sum()) == 45 and bool(masks['dense']['kernel'].all())


def test_apply_mask_zeroes_pruned_weights_and_leaves_the_rest():
  params = {'w': jnp.arange(1.0, 7.0).reshape(2, 3), 'b': jnp.ones(3)}
  masks = {'w': jnp.array([[True, False, True], [False, True, False]]), 'b': None}
  out = prospr_jax.apply_mask(params, masks)
  np.testing.assert_array_equal(out['w'], [[1, 0, 3], [0, 5, 0]])
  np.testing.assert_array_equal(out['b'], params['b'])


def test_apply_mask_with_a_channel_mask_zeroes_whole_output_channels():
  params = {'conv': jnp.ones((3, 3, 2, 4))}
  out = prospr_jax.apply_mask(params, {'conv': jnp.array([True, False, True, False])})
  np.testing.assert_array_equal(out['conv'].sum(axis=(0, 1, 2)), [18, 0, 18, 0])


def test_masks_round_trip_through_layer_names():
  params = {'conv': {'kernel': jnp.ones((3, 3, 2, 4)), 'bias': jnp.ones(4)}}
  masks = prospr_jax.global_topk_mask(prospr_jax.magnitude_saliency(params), 0.5)
  rebuilt = masks_lib.masks_from_mapping(dict(masks_lib.named_leaves(masks)), params)
  jax.tree.map(np.testing.assert_array_equal, rebuilt, masks, is_leaf=masks_lib.is_none)


def test_sparsity_report_counts_kept_weights_per_layer_and_saves_json(tmp_path):
  params = {'conv': {'kernel': jnp.ones((3, 3, 2, 4)), 'bias': jnp.ones(4)}, 'dense': {'kernel': jnp.ones((4, 5))}}
  masks = {'conv': {'kernel': jnp.array([True, False, False, True]), 'bias': None},
           'dense': {'kernel': jnp.eye(4, 5, dtype=bool)}}
  report = prospr_jax.sparsity_report(masks, params)
  assert [(layer.name, layer.kept, layer.total) for layer in report.layers] == [
      ('conv/kernel', 36, 72), ('dense/kernel', 4, 20)]
  assert report.kept == 40 and report.total == 92
  table = str(report)
  assert 'conv/kernel' in table and '50.00%' in table and '43.48%' in table
  report.save_json(tmp_path / 'report.json')
  saved = json.loads((tmp_path / 'report.json').read_text())
  assert saved['kept'] == 40 and saved['layers'][1]['density'] == pytest.approx(0.2)
