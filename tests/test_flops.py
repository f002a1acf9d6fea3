"""FLOPs counted from shapes: the published counts, and the same under every convolution implementation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import prospr_jax
from prospr_jax.channels import scores as channel_scores
from prospr_jax.criteria import registry, structured
from prospr_jax.models import flops, get_model, plans
from prospr_jax.xla_cpu import conv, conv_impl, winograd


def abstract(model, shape):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False))


@pytest.mark.parametrize('name, classes, shape, kwargs, macs', [
    # torchvision's published GFLOPS (multiply-adds): ResNet50_Weights.IMAGENET1K_V1 4.09, VGG16 15.47
    ('resnet50', 1000, (224, 224, 3), {}, 4.089184e9),
    ('vgg16', 1000, (224, 224, 3), {'imagenet_head': True}, 15.470264e9),
    # VGG-16 on CIFAR-10: 3.13e8 (Li et al. 2017, "Pruning Filters for Efficient ConvNets", Table 2)
    ('vgg16', 10, (32, 32, 3), {}, 3.132017e8),
    # ResNet-20 (option A) on CIFAR: stem 3*16*9*1024 + 6 * 16*16*9*1024 + (16*32 + 5*32*32)*9*256
    # + (32*64 + 5*64*64)*9*64 + 64*10 = 40,551,040 (pytorch-cifar-models lists 40.81M for its ResNet-20 with
    # 1x1 projection shortcuts: the two projections add 2 * 131,072)
    ('resnet20', 10, (32, 32, 3), {}, 40_551_040),
])
def test_flops_counted_from_shapes_equal_the_published_multiply_adds(name, classes, shape, kwargs, macs):
  model = get_model(name, classes, **kwargs)
  assert flops.forward_flops(model, abstract(model, shape), shape) / 2 == pytest.approx(macs, rel=1e-6)


IMPLEMENTATIONS = {
    'lax': None,
    'auto': conv_impl.resolve_conv_impl('auto', 'cpu'),
    'auto:32': conv_impl.resolve_conv_impl('auto:32', 'cpu'),
    'im2col': conv_impl.resolve_conv_impl('im2col', 'cpu'),
    'winograd': conv._make(winograd.winograd_conv, 'winograd'),
}


def three_sp_under(implementation):
  model = get_model('vgg11', 3, width=1 / 16, conv_general_dilated=IMPLEMENTATIONS[implementation])
  variables = jax.tree.map(lambda x: x.astype(jnp.float64), model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)),
                                                                          train=False))
  plan = plans.channel_plan(model, variables['params'])
  positions = flops.output_positions(model, variables, (16, 16, 3))
  batches = (jax.random.normal(jax.random.key(1), (1, 4, 16, 16, 3), jnp.float64), jnp.array([[0, 1, 2, 0]]))
  scores = channel_scores.score_channels(registry.get_criterion('three_sp'), plan, variables['params'], batches,
                                         loss_fn=prospr_jax.flax_loss_fn(model, variables), positions=positions)
  return (channel_scores.channel_flops(plan, variables['params'], positions), scores,
          flops.forward_flops(model, variables, (16, 16, 3)))


@pytest.mark.slow
def test_three_sp_costs_and_scores_are_the_same_under_every_convolution_implementation():
  costs, scores, total = three_sp_under('lax')
  for implementation in ('auto', 'auto:32', 'im2col', 'winograd'):
    other_costs, other_scores, other_total = three_sp_under(implementation)
    assert other_total == total, implementation
    jax.tree.map(np.testing.assert_array_equal, other_costs, costs)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, err_msg=implementation),
                 other_scores, scores)


@pytest.mark.slow
def test_reading_positions_off_a_loss_that_runs_im2col_is_refused_naming_the_count_from_shapes():
  model = get_model('vgg11', 3, width=1 / 16, conv_general_dilated=IMPLEMENTATIONS['im2col'])
  variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False)
  batch = (jnp.zeros((4, 16, 16, 3)), jnp.zeros((4,), jnp.int32))
  with pytest.raises(ValueError, match=r'Conv_0/kernel.*prospr_jax.output_positions'):
    structured.kernel_positions(prospr_jax.flax_loss_fn(model, variables), variables['params'], batch)
  lax_model = get_model('vgg11', 3, width=1 / 16)
  read = structured.kernel_positions(prospr_jax.flax_loss_fn(lax_model, variables), variables['params'], batch)
  assert read == flops.output_positions(lax_model, variables, (16, 16, 3))  # where it can read, it agrees
