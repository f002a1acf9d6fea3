"""Sanity-check ablations change what they should and nothing else."""

import jax
import jax.numpy as jnp
import numpy as np

import prospr_jax
from prospr_jax import ablations


def masks_and_scores():
  rng = np.random.default_rng(0)
  scores = {'a': jnp.asarray(rng.random((6, 5))), 'b': jnp.asarray(rng.random((3, 3, 2, 4))), 'bias': None}
  return prospr_jax.global_topk_mask(scores, 0.7), scores


def test_shuffle_keeps_every_layers_count_and_moves_the_kept_entries():
  masks, _ = masks_and_scores()
  shuffled = ablations.shuffle_within_layers(masks, 0)
  assert shuffled['bias'] is None
  for key in ('a', 'b'):
    assert int(shuffled[key].sum()) == int(masks[key].sum()) and shuffled[key].shape == masks[key].shape
    assert not np.array_equal(shuffled[key], masks[key])


def test_invert_keeps_the_count_and_the_lowest_scores():
  masks, scores = masks_and_scores()
  inverted = prospr_jax.global_topk_mask(ablations.invert_scores(scores), 0.7)
  assert sum(int(m.sum()) for m in jax.tree.leaves(inverted)) == sum(int(m.sum()) for m in jax.tree.leaves(masks))
  kept = np.concatenate([np.asarray(scores[k])[np.asarray(inverted[k])] for k in ('a', 'b')])
  dropped = np.concatenate([np.asarray(scores[k])[~np.asarray(inverted[k])] for k in ('a', 'b')])
  assert kept.max() <= dropped.min()


def test_reinit_replaces_masked_leaves_only():
  params = {'w': jnp.ones((2, 3)), 'b': jnp.zeros(3)}
  fresh = {'w': jnp.full((2, 3), 7.0), 'b': jnp.full(3, 9.0)}
  masks = {'w': jnp.array([[True, False, True], [False, True, True]]), 'b': None}
  out = ablations.reinitialize(params, masks, fresh)
  np.testing.assert_array_equal(out['w'], fresh['w'])
  np.testing.assert_array_equal(out['b'], params['b'])
  np.testing.assert_array_equal(prospr_jax.apply_mask(out, masks)['w'], [[7, 0, 7], [0, 7, 7]])
