"""Scoring precision: float64 equals the float64 computation, bfloat16 scores as its float32 upcast, the settings."""

import json
import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nets import ORACLE_LAYERS, load_oracle, oracle_batches, oracle_loss, oracle_params
from test_oracle import RTOL, assert_close_relative

import prospr_jax
from prospr_jax import precision, stability
from prospr_jax.harness import experiment, pruning, validation
from prospr_jax.harness.records import PruneSpec, Scoring
from prospr_jax.harness.setup import make_setup
from prospr_jax.runtime import determinism

to = lambda dtype, tree: jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def test_float64_scoring_without_global_x64_matches_the_authors_code_in_float64():
  ref = load_oracle('prospr_full_m3_mom0')
  params, batches = oracle_params(ref), oracle_batches(ref)  # float64 values
  with jax.enable_x64(False):  # as in a run: x64 only inside the scoring
    grads = prospr_jax.prospr_meta_gradient(params, batches, loss_fn=oracle_loss, inner_lr=float(ref['lr']),
                                            precision='float64')
  for layer in ORACLE_LAYERS:
    assert grads[layer]['kernel'].dtype == jnp.float64
    assert_close_relative(grads[layer]['kernel'], ref[f'metagrad_{layer}_kernel'])
  assert RTOL == 1e-9


def test_float64_scoring_is_the_float64_computation_bit_for_bit():
  ref = load_oracle('snip_m0')
  params, batches = oracle_params(ref), oracle_batches(ref)
  exact = prospr_jax.snip_saliency(params, batches, loss_fn=oracle_loss)  # the suite runs with x64 on
  with jax.enable_x64(False):
    scoped = prospr_jax.snip_saliency(params, batches, loss_fn=oracle_loss, precision='float64')
  jax.tree.map(np.testing.assert_array_equal, scoped, exact)


@pytest.mark.slow
def test_bfloat16_parameters_score_and_mask_as_their_float32_upcast():
  ref = load_oracle('prospr_full_m3_mom0')
  params = to(jnp.bfloat16, oracle_params(ref))
  batches = to(jnp.float32, oracle_batches(ref))
  low = prospr_jax.prospr_saliency(params, batches, loss_fn=oracle_loss, inner_lr=float(ref['lr']))
  upcast = prospr_jax.prospr_saliency(to(jnp.float32, params), batches, loss_fn=oracle_loss,
                                      inner_lr=float(ref['lr']))
  for layer in ORACLE_LAYERS:
    if low[layer]['kernel'] is not None:
      assert low[layer]['kernel'].dtype == jnp.float32
  jax.tree.map(np.testing.assert_array_equal, low, upcast)
  jax.tree.map(np.testing.assert_array_equal, prospr_jax.global_topk_mask(low, 0.9),
               prospr_jax.global_topk_mask(upcast, 0.9))


def test_a_stream_of_batches_is_cast_as_it_is_read_and_scores_like_the_stacked_batches():
  ref = load_oracle('prospr_full_m3_mom0')
  params, batches = to(jnp.float32, oracle_params(ref)), to(jnp.float32, oracle_batches(ref))
  read = []

  def stream():
    for i in range(batches[0].shape[0]):
      read.append(i)
      yield jax.tree.map(lambda b: b[i], batches)

  kwargs = dict(loss_fn=oracle_loss, inner_lr=float(ref['lr']), precision='float64')
  with jax.enable_x64(False), warnings.catch_warnings():
    warnings.simplefilter('error')  # JAX deprecates a generator as a pytree leaf
    with precision.scoring('float64'):
      cast = precision.cast(stream(), 'float64')
      assert read == []  # nothing read up front
      assert jax.tree.leaves(next(cast))[0].dtype == jnp.float64 and read == [0]
    read.clear()
    streamed = prospr_jax.prospr_saliency_streamed(params, stream(), **kwargs)
    stacked = prospr_jax.prospr_saliency(params, batches, first_order=True, **kwargs)
  for layer in ORACLE_LAYERS:
    np.testing.assert_allclose(streamed[layer]['kernel'], stacked[layer]['kernel'], rtol=1e-12)


def test_float64_scores_are_ranked_in_float64_even_outside_x64():
  scores = {'a': np.array([1.0, 1.0 + 1e-12, 1.0 - 1e-12])}  # equal in float32
  with jax.enable_x64(False):
    mask = prospr_jax.global_topk_mask(scores, 2 / 3)
  assert mask['a'].tolist() == [False, True, False]


@pytest.mark.slow
def test_highest_precision_scores_run_and_the_cpu_computes_float32_at_full_precision_anyway():
  ref = load_oracle('snip_m0')
  params, batches = to(jnp.float32, oracle_params(ref)), to(jnp.float32, oracle_batches(ref))
  jax.tree.map(np.testing.assert_array_equal,
               prospr_jax.snip_saliency(params, batches, loss_fn=oracle_loss, precision='highest'),
               prospr_jax.snip_saliency(params, batches, loss_fn=oracle_loss))


def test_unknown_precisions_and_float64_on_a_tpu_are_refused_naming_the_alternative():
  with pytest.raises(ValueError, match="valid values are float32, float64, highest"):
    precision.check_precision('double')
  with pytest.raises(ValueError, match="TPUs.*precision='highest'"):
    precision.check_precision('float64', backend='tpu')
  from configs import default
  config = default.get_config()
  config.prune.precision = 'half'
  with pytest.raises(validation.ConfigError, match='config.prune.precision'):
    validation.validate_config(config)


def test_the_stability_check_scores_again_more_exactly_or_on_nudged_inputs():
  assert stability.second_scoring('float32', 'cpu').precision == 'float64'
  assert stability.second_scoring('float32', 'tpu').precision == 'highest'
  nudged = stability.second_scoring('float64', 'cpu')
  assert (nudged.precision, nudged.input_scale) == ('float64', 1 + 1e-6)
  masks = {'a': np.array([True, True, False, False]), 'b': np.array([True, False])}
  other = {'a': np.array([True, False, True, False]), 'b': np.array([True, False])}
  assert stability.kept_overlap(masks, other) == {'total': 2 / 3, 'layers': {'a': 0.5, 'b': 1.0}}


def test_the_stability_checks_nudged_inputs_reach_a_streamed_scoring_as_a_stacked_one():
  from configs import default
  config = default.get_config()
  config.prune.update(first_order=True, batch_size=16)
  setup = make_setup(config)

  def scores(streamed: bool, input_scale: float):
    config.prune.streamed = streamed
    return pruning.compute_scores(Scoring.of(config), PruneSpec.of(config), setup.model, setup.variables,
                                  setup.info, setup.train_source, setup.mesh, input_scale)

  stacked, streamed = scores(False, 1.5), scores(True, 1.5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-12), streamed, stacked)
  plain = scores(True, 1.0)
  assert not all(jax.tree.leaves(jax.tree.map(np.allclose, plain, streamed)))  # the nudge changed the scores


def test_a_scorings_settings_change_only_by_their_names():
  from configs import default
  scoring = Scoring.of(default.get_config())
  assert scoring.with_settings(precision='float64').precision == 'float64' and scoring.precision == 'float32'
  assert hash(scoring) == hash(Scoring.of(default.get_config()))
  with pytest.raises(KeyError, match='precison not among the config.prune settings'):
    scoring.with_settings(precison='float64')


def test_the_stability_warning_names_what_moved_the_mask_and_only_a_fix_that_helps():
  assert stability.warning(stability.second_scoring('float32', 'cpu'), 0.95) is None
  arithmetic = stability.warning(stability.second_scoring('float32', 'cpu'), 0.6)
  assert 'not determined by the arithmetic' in arithmetic and '60.0%' in arithmetic
  assert 'config.prune.precision=float64' in arithmetic
  on_tpu = stability.warning(stability.second_scoring('float32', 'tpu'), 0.6)
  assert 'config.prune.precision=highest' in on_tpu
  inputs = stability.warning(stability.second_scoring('float64', 'cpu'), 0.88)
  assert 'sixth digit' in inputs and 'precision=' not in inputs  # already the most exact: no precision to name


@pytest.mark.slow
def test_a_run_records_its_precision_and_the_stability_of_its_mask(tmp_path):
  from configs import default
  config = default.get_config()
  config.num_epochs = 0
  config.prune.update(precision='float64', check_stability=True, batch_size=16)
  experiment.prune_and_train(config, tmp_path)
  record = json.loads((tmp_path / 'pruning.json').read_text())
  assert record['prune']['precision'] == 'float64' and record['deterministic_ops'] is False
  assert record['stability']['against'] == 'float64, inputs x (1 + 1e-06)'
  assert 0.9 <= record['stability']['total'] <= 1.0 and set(record['stability']['layers']) == {
      'Conv_0/kernel', 'Conv_1/kernel', 'Dense_0/kernel'}


@pytest.mark.slow
def test_deterministic_ops_are_requested_before_jax_starts_and_refused_after():
  code = ('from prospr_jax import determinism; determinism.request_deterministic_ops(); import jax; jax.devices(); '
          'import os; print(os.environ["XLA_FLAGS"])')
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=120)
  assert done.returncode == 0 and done.stdout.strip() == determinism.FLAG, done.stderr[-2000:]
  jax.devices()
  if not determinism.is_requested():
    with pytest.raises(RuntimeError, match='before JAX starts.*--deterministic'):
      determinism.request_deterministic_ops()
