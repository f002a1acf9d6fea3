"""Structured sparsity counts channels, or the weights the kept channels own (config.prune.structured_target)."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prospr_jax import distributions
from prospr_jax.channels import target as structured_target
from prospr_jax.harness import experiment, validation
from prospr_jax.models import get_model, plans
from prospr_jax.runtime import workdir as workdir_lib

MASK_AT = functools.partial(distributions.make_mask, distribution='global', keep_one_per_layer=True)


def vgg11_with_random_channel_scores():
  model = get_model('vgg11', 10, width=1 / 8)
  params = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False)['params']
  plan = plans.channel_plan(model, params)
  rng = np.random.default_rng(0)
  return plan, params, {group.name: rng.random(group.size) for group in plan.groups}


@pytest.mark.slow
def test_the_weights_target_keeps_the_fewest_channels_in_score_order_whose_weights_meet_the_sparsity():
  plan, params, scores = vgg11_with_random_channel_scores()
  mask = structured_target.mask_for_weight_sparsity(plan, params, scores, 0.9, MASK_AT)
  kept = sum(int(np.sum(m)) for m in mask.values())
  total = sum(int(np.size(m)) for m in mask.values())
  assert structured_target.weight_density(plan, mask, params) >= 0.1
  one_fewer = MASK_AT(scores, 1 - (kept - 1) / total)
  assert structured_target.weight_density(plan, one_fewer, params) < 0.1
  jax.tree.map(np.testing.assert_array_equal, mask, MASK_AT(scores, 1 - kept / total))  # the scores' order
  assert 0.2 < kept / total < 0.5  # about sqrt(0.1) of the channels keep a tenth of the weights


@pytest.mark.slow
def test_a_channel_sparsity_keeps_far_fewer_weights_than_the_same_weight_sparsity():
  plan, params, scores = vgg11_with_random_channel_scores()
  by_channels = MASK_AT(scores, 0.9)
  assert structured_target.weight_density(plan, by_channels, params) < 0.02  # ~ (1 - 0.9)^2


@pytest.mark.slow
def test_a_structured_run_with_the_weights_target_reports_both_sparsities(tmp_path):
  from configs import default
  config = default.get_config()
  config.num_epochs = 0
  config.criterion = 'snip'
  config.prune.update(structured=True, structured_target='weights', sparsity=0.75, num_steps=0, batch_size=16,
                      keep_one_per_layer=True)
  experiment.prune_and_train(config, tmp_path)
  report = json.loads((tmp_path / 'sparsity_report.json').read_text())
  assert report['structured_target'] == 'weights'
  assert report['weights']['density'] >= 0.25 and report['density'] > report['weights']['density']
  assert json.loads((tmp_path / 'pruning.json').read_text())['structured_target'] == 'weights'


@pytest.mark.parametrize('overrides, message', [
    ({'structured_target': 'weights'}, r"structured_target='weights'.*set config.prune.structured=True"),
    ({'structured': True, 'structured_target': 'params'}, r"structured_target='params'.*channels, weights"),
])
def test_a_bad_structured_target_is_refused_naming_the_fix(overrides, message):
  from configs import default
  config = default.get_config()
  config.prune.update(**overrides)
  with pytest.raises(validation.ConfigError, match=message):
    validation.validate_config(config)


def test_a_config_recorded_before_the_target_existed_counts_channels():
  from configs import default
  config = default.get_config()
  config.prune.structured = True
  recorded = config.to_dict()
  del recorded['prune']['structured_target']
  assert workdir_lib.differing_fields(recorded, config.to_dict()) == []
  config.prune.structured_target = 'weights'
  assert workdir_lib.differing_fields(recorded, config.to_dict()) == ['prune.structured_target']


def test_table_2s_config_counts_weights():
  from configs import cifar100_vgg19
  assert cifar100_vgg19.get_config().prune.structured_target == 'weights'
