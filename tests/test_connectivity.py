"""Layer collapse is a network with no path from its input to its output, not any emptied layer: a residual
network whose emptied convolution a shortcut bypasses still computes, trains, and is measured."""

import json

import jax
import numpy as np
import pytest

from prospr_jax import masks as masks_lib, topk
from prospr_jax.harness import connectivity, pruning, reports
from prospr_jax.harness.records import PruneSpec
from prospr_jax.models import get_model, init_variables

INPUT = (8, 8, 1)


def network(name, **kwargs):
  model = get_model(name, 10, **kwargs)
  return model, init_variables(model, INPUT, jax.random.key(0))


def ones_except(params, *emptied):
  """Scores of 1 everywhere but 0 on the kernels of the ``emptied`` layers (e.g. ``'Conv_0'``)."""
  scores = masks_lib.all_ones_mask(params)
  names = [name.removesuffix('/kernel') for name, _ in masks_lib.named_leaves(scores)]
  assert set(emptied) <= set(names), f'no such layer: {set(emptied) - set(names)}; layers: {names}'
  emptied_score = lambda path: 0.0 if masks_lib.layer_name(path).removesuffix('/kernel') in emptied else 1.0
  return jax.tree_util.tree_map_with_path(
      lambda path, s: None if s is None else np.full(np.shape(s), emptied_score(path), np.float32), scores,
      is_leaf=masks_lib.is_none)


def spec(sparsity):
  return PruneSpec('snip', sparsity, 'global', 'none', False, True, 'channels', False)


def emptied_sparsity(params, *emptied):
  """The sparsity at which the global top-k keeps exactly the nonzero scores."""
  sizes = {name.removesuffix('/kernel'): np.size(leaf)
           for name, leaf in masks_lib.named_leaves(masks_lib.all_ones_mask(params))}
  return sum(sizes[name] for name in emptied) / sum(sizes.values())


@pytest.fixture(scope='module')
def resnet():
  return network('resnet20', width=4)


def test_a_resnet_whose_emptied_branch_convolution_a_shortcut_bypasses_still_depends_on_its_input(resnet, tmp_path):
  model, variables = resnet
  layers = ['OptionABlock_7/Conv_1', 'OptionABlock_8/Conv_0']
  scores = ones_except(variables['params'], *layers)
  sparsity = emptied_sparsity(variables['params'], *layers)
  with pytest.raises(topk.LayerCollapseError) as refused:  # the library's top-k still refuses it, naming them
    topk.global_topk_mask(scores, sparsity)
  assert refused.value.emptied == tuple(f'{layer}/kernel' for layer in layers)
  assert connectivity.output_depends_on_input(model, variables, refused.value.mask, INPUT)
  masks = pruning.connected_mask(spec(sparsity), model, variables, scores, INPUT)  # the harness trains it
  kept = dict(masks_lib.named_leaves(masks))
  assert [name for name, m in kept.items() if not np.any(m)] == [f'{layer}/kernel' for layer in layers]
  assert all(np.all(m) for name, m in kept.items() if name.split('/kernel')[0] not in layers)
  report, weights = reports.mask_reports(model, variables['params'], masks, False)  # pruning.json names them
  pruning.write_mask_artifacts(tmp_path, masks, report, spec(sparsity), 'resnet20 on digits', 1.0, scores, weights)
  assert json.loads((tmp_path / 'pruning.json').read_text())['emptied_layers'] == [f'{l}/kernel' for l in layers]


def test_emptying_the_stem_or_the_classifier_of_a_resnet_is_layer_collapse(resnet):
  model, variables = resnet
  for layer in ('Conv_0', 'Dense_0'):  # on every path from the input to the output
    scores = ones_except(variables['params'], layer)
    with pytest.raises(topk.LayerCollapseError, match='No path from the input to the output is left') as refused:
      pruning.connected_mask(spec(emptied_sparsity(variables['params'], layer)), model, variables, scores, INPUT)
    assert refused.value.emptied == (f'{layer}/kernel',)


def test_an_emptied_layer_of_a_chain_is_layer_collapse():
  model, variables = network('lenet300_100')
  scores = ones_except(variables['params'], 'Dense_1')
  sparsity = emptied_sparsity(variables['params'], 'Dense_1')
  with pytest.raises(topk.LayerCollapseError) as refused:
    topk.global_topk_mask(scores, sparsity)
  assert not connectivity.output_depends_on_input(model, variables, refused.value.mask, INPUT)
  with pytest.raises(topk.LayerCollapseError, match='every weight of Dense_1/kernel.*No path'):
    pruning.connected_mask(spec(sparsity), model, variables, scores, INPUT)


def test_an_intact_network_depends_on_its_input(resnet):
  model, variables = resnet
  assert connectivity.output_depends_on_input(model, variables, masks_lib.all_ones_mask(variables['params']), INPUT)


def test_a_path_that_eval_mode_initial_statistics_would_leave_dead_still_counts(resnet):
  """BatchNorm with its initial running statistics passes a negative pre-activation on as negative for every input, so
  an eval-mode check would call this network collapsed; in train mode (as it trains) the channel is centred and live."""
  model, variables = resnet
  params = jax.tree.map(np.array, variables['params'])
  masks = jax.tree.map(np.array, masks_lib.all_ones_mask(params))
  for block in ('OptionABlock_7', 'OptionABlock_8'):  # the last stage's convolutions emptied (bypassed)
    for conv in ('Conv_0', 'Conv_1'):
      masks[block][conv]['kernel'][:] = False
  kernel = masks['OptionABlock_6']['Conv_1']['kernel']  # channel 0 of the stream: one weight left, negative
  kernel[..., 0] = False
  kernel[1, 1, 0, 0] = True
  weights = params['OptionABlock_6']['Conv_1']['kernel']
  weights[1, 1, 0, 0] = -abs(weights[1, 1, 0, 0])
  masks['Dense_0']['kernel'][:] = False  # the classifier reads channel 0 only
  masks['Dense_0']['kernel'][0, :] = True
  assert connectivity.output_depends_on_input(model, {**variables, 'params': params}, masks, INPUT)
