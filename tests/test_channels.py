"""Channel masks remove channels: ties across residual sums, every parameter of a channel, zero through training."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_training import digits_batches, run_train_steps

import prospr_jax
from prospr_jax.channels import groups, scores as channel_scores
from prospr_jax.harness import train_steps
from prospr_jax.models import get_model, plans
from prospr_jax.runtime import checkpointing


@functools.cache
def net(name, **kwargs):
  model = get_model(name, 3, **kwargs)
  shape = (8, 8, 1) if name in ('resnet20', 'small_cnn') else (16, 16, 3)
  variables = model.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False)
  return model, variables, plans.channel_plan(model, variables['params'])


def writers(group):
  return [('/'.join(slot.module), slot.channels) for slot in group.writers]


def module_of(tree, module):
  return functools.reduce(lambda node, name: node[name], module, tree)


def test_vgg_has_one_free_group_per_conv_named_after_its_kernel_and_the_classifier_is_never_pruned():
  _, _, plan = net('vgg11', width=1 / 16)
  assert plan.names() == tuple(f'Conv_{i}/kernel' for i in range(8))
  assert all(len(group.writers) == 1 for group in plan.groups)
  assert plan.groups[-1].readers[0].module == ('Dense_0',)


@pytest.mark.slow
def test_resnet18_streams_are_tied_across_the_stem_the_blocks_last_convs_and_the_projection():
  _, _, plan = net('resnet18', width=2, small_input=True)
  groups = {group.name: group for group in plan.groups}
  assert [m for m, _ in writers(groups['Conv_0/kernel'])] == ['Conv_0', 'BasicBlock_0/Conv_1', 'BasicBlock_1/Conv_1']
  assert [m for m, _ in writers(groups['BasicBlock_2/Conv_2/kernel'])] == [
      'BasicBlock_2/Conv_2', 'BasicBlock_2/Conv_1', 'BasicBlock_3/Conv_1']
  assert [m for m, _ in writers(groups['BasicBlock_3/Conv_0/kernel'])] == ['BasicBlock_3/Conv_0']  # block-internal: free
  assert len(plan.groups) == 4 + 8


def test_resnet20_lanes_follow_the_zero_padding_shortcut_into_the_later_stages():
  _, _, plan = net('resnet20', width=4)  # streams 4, 8, 16; shortcuts pad (2, 2) and (4, 4)
  lanes, stage2, stage3 = plan.groups[:3]
  assert dict(writers(lanes))['Conv_0'] == (0, 1, 2, 3)
  assert dict(writers(lanes))['OptionABlock_3/Conv_1'] == (2, 3, 4, 5)        # channel c of stage 1 is 2 + c
  assert dict(writers(lanes))['OptionABlock_8/Conv_1'] == (6, 7, 8, 9)        # and 4 + 2 + c of stage 3
  assert dict(writers(stage2))['OptionABlock_3/Conv_1'] == (0, 1, 6, 7)       # the padding stage 2 adds
  assert dict(writers(stage2))['OptionABlock_6/Conv_1'] == (4, 5, 10, 11)
  assert dict(writers(stage3))['OptionABlock_6/Conv_1'] == (0, 1, 2, 3, 12, 13, 14, 15)
  assert stage2.may_empty and not lanes.may_empty


def test_a_channel_mask_zeroes_its_kernel_slices_bias_batchnorm_and_the_next_layers_input_rows():
  _, variables, plan = net('vgg11', width=1 / 16)
  mask = groups.ones(plan)
  mask['Conv_2/kernel'][1] = False
  full = groups.expand(plan, mask, variables['params'])
  assert not full['Conv_2']['kernel'][..., 1].any() and full['Conv_2']['kernel'][..., 0].all()
  assert not full['Conv_2']['bias'][1] and not full['BatchNorm_2']['scale'][1] and not full['BatchNorm_2']['bias'][1]
  assert not full['Conv_3']['kernel'][:, :, 1, :].any() and full['Conv_3']['kernel'][:, :, 0, :].all()
  assert full['Dense_0']['bias'] is None


@pytest.mark.parametrize('name, kwargs', [('vgg11', {'width': 1 / 16}), ('resnet20', {'width': 4})])
def test_a_tied_group_is_kept_or_removed_whole_in_every_conv_that_writes_it(name, kwargs):
  _, variables, plan = net(name, **kwargs)
  scores = channel_scores.score_channels(prospr_jax.random_saliency, plan, variables['params'], None, rng=3)
  mask = prospr_jax.global_topk_mask(scores, 0.5, keep_one_per_layer=True)
  full = groups.expand(plan, mask, variables['params'])
  for group in plan.groups:
    for slot in group.writers:
      kernel = np.asarray(module_of(full, slot.module)['kernel'])[..., list(slot.channels)]
      assert np.array_equal(kernel.reshape(-1, group.size).any(0), mask[group.name])
      assert not kernel[..., ~np.asarray(mask[group.name])].any()


@pytest.mark.slow
def test_a_tied_channel_scores_the_sum_of_its_writers_meta_gradients():
  model, variables, plan = net('resnet20', width=2)
  params = jax.tree.map(lambda p: p.astype(jnp.float64), variables['params'])
  x = jax.random.normal(jax.random.key(1), (2, 4, 8, 8, 1), jnp.float64)
  batches = (x, jnp.array([[0, 1, 2, 0]] * 2))
  loss_fn = prospr_jax.flax_loss_fn(model, variables)
  tied = channel_scores.score_channels(prospr_jax.prospr_meta_gradient, plan, params, batches, loss_fn=loss_fn)
  kernels = {slot.module + ('kernel',) for group in plan.groups for slot in group.writers}
  untied = prospr_jax.prospr_meta_gradient(params, batches, loss_fn=loss_fn, structured=True,
                                           prunable=lambda path, leaf: path in kernels)  # exact, M = 1
  for group in plan.groups:
    expected = sum(np.asarray(module_of(untied, slot.module)['kernel'])[list(slot.channels)] for slot in group.writers)
    np.testing.assert_allclose(tied[group.name], expected, rtol=1e-9, atol=1e-14)
  assert len(plan.groups[0].writers) == 10  # the stem and nine blocks write the first lanes


def test_pack_then_unpack_gives_back_the_params():
  _, variables, plan = net('resnet20', width=4)
  packed, unpack = channel_scores.pack(plan, variables['params'])
  assert packed['groups']['Conv_0/kernel'].shape == (9 + 3 * 36 + 3 * 72 + 3 * 144, 4)  # stem, then 3x3 kernels
  jax.tree.map(np.testing.assert_array_equal, unpack(packed), variables['params'])


def three_classes(batches):
  """Digits labelled 0-2 (digit mod 3), for the 3-class nets here: a label out of range makes the loss NaN."""
  for batch in batches:
    yield {**batch, 'label': batch['label'] % 3}


@pytest.mark.slow
def test_dead_channels_stay_exactly_zero_through_momentum_weight_decay_a_restore_and_more_training(tmp_path):
  model, variables, plan = net('resnet20', width=4)
  mask = groups.ones(plan)
  mask['Conv_0/kernel'][1] = False                        # a lane: ten convs and their BatchNorms
  mask['OptionABlock_6/Conv_1/kernel'][[0, 5]] = False     # stage 3's own channels
  mask['OptionABlock_4/Conv_0/kernel'][2] = False          # a block-internal channel
  full = groups.expand(plan, mask, variables['params'])
  optimizer = train_steps.make_optimizer(learning_rate=0.1, momentum=0.9, weight_decay=5e-4)
  state = train_steps.create_train_state(variables, full, optimizer, jax.random.key(2))
  step = jax.jit(functools.partial(train_steps.train_step, model=model, optimizer=optimizer))
  state = run_train_steps(state, step, three_classes(digits_batches()), 30)
  checkpointer = checkpointing.Checkpointer(tmp_path)
  checkpointer.save(30, state, variables['params'], {'epoch': 0})
  checkpointer.wait()
  template = train_steps.create_train_state(variables, full, optimizer, jax.random.key(2))
  restored, _, _ = checkpointer.restore(template, variables['params'])
  state = run_train_steps(restored, step, three_classes(digits_batches(start_step=30)), 20)
  for m, p in zip(jax.tree.leaves(full, is_leaf=prospr_jax.masks.is_none), jax.tree.leaves(state.params)):
    assert m is None or not np.asarray(p)[~np.asarray(m)].any()  # exactly 0.0: kernels, BatchNorm scale and offset
  assert np.asarray(state.params['BatchNorm_0']['bias'])[0] != 0  # a kept channel's offset trained
  images = next(digits_batches())['image']
  _, captured = model.apply({'params': state.params, 'batch_stats': state.batch_stats}, images, train=False,
                            capture_intermediates=True)
  stream = captured['intermediates']
  assert not np.asarray(stream['BatchNorm_0']['__call__'][0])[..., 1].any()           # the stem's dead lane
  assert not np.asarray(stream['OptionABlock_8']['__call__'][0])[..., 6 + 1].any()    # ... at the network's end
  assert not np.asarray(stream['OptionABlock_4']['BatchNorm_0']['__call__'][0])[..., 2].any()
  assert np.asarray(stream['OptionABlock_8']['__call__'][0])[..., 6].any()


@pytest.mark.slow
def test_an_untied_per_kernel_resnet_mask_is_called_so_and_the_fix_is_named():
  model, variables, plan = net('resnet18', width=2, small_input=True)
  batches = (jax.random.normal(jax.random.key(1), (1, 2, 16, 16, 3)), jnp.array([[0, 1]]))
  loss_fn = prospr_jax.flax_loss_fn(model, variables)
  scores = prospr_jax.snip_saliency(variables['params'], batches, loss_fn=loss_fn, structured=True)
  untied = prospr_jax.global_topk_mask(scores, 0.5, keep_one_per_layer=True)
  with pytest.raises(ValueError, match=r'per-kernel \(untied\) channel mask.*BasicBlock_0/Conv_1/kernel is tied '
                                       r'into Conv_0/kernel.*prospr_jax.score_channels') as refusal:
    groups.check_mask(plan, untied)
  assert 'another model' not in str(refusal.value)


def test_named_paths_names_each_leaf_by_its_key_tuple():
  tree = {'block': {'conv': {'kernel': np.ones((1, 2)), 'bias': np.ones(2)}}}
  assert [names for names, _ in groups.named_paths(tree)] == [('block', 'conv', 'bias'), ('block', 'conv', 'kernel')]
  assert not hasattr(groups, 'named_leaves')  # masks.named_leaves joins the names: one name, one meaning
