"""What every network of a run starts from: data sources, the model, its initial variables and the device mesh."""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from chex import ArrayTree
from jax.sharding import Mesh

from prospr_jax import data, models
from prospr_jax.harness import seeds, validation
from prospr_jax.runtime import sharding

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Setup:
  info: data.DatasetInfo
  model: nn.Module
  variables: ArrayTree  # the initialisation every network here starts from
  mesh: Mesh
  train_source: Any
  eval_source: Any


def init_variables(model: nn.Module, info: data.DatasetInfo, key: jax.Array) -> ArrayTree:
  """The model's variables (params, BatchNorm statistics) drawn from ``key``."""
  return models.init_variables(model, info.input_shape, key)


def make_setup(config: ml_collections.ConfigDict) -> Setup:
  """Data sources, model, initial variables and mesh of a (valid: ``validate_config``) config."""
  info = data.get_dataset_info(config.dataset)
  data_dir = config.data_dir or None
  train_source = data.load_source(config.dataset, info.train_split, data_dir)
  eval_source = data.load_source(config.dataset, info.eval_split, data_dir)
  for name, size in (('batch_size', config.batch_size), ('prune.batch_size', config.prune.batch_size)):
    if size > len(train_source):
      raise validation.ConfigError(f'config.{name}={size} is more than the {len(train_source)} training records '
                                   f'of {config.dataset}: lower it')
  model = models.build_model(config.model, info.num_classes, config.model_kwargs, config.conv_impl)
  conv = getattr(model, 'conv_general_dilated', None)
  log.info('conv_impl %s on %s: %s', config.conv_impl, jax.default_backend(),
           'lax.conv_general_dilated' if conv is None else conv.__name__)
  check_input_size(model, info, config.model, config.dataset)
  variables = init_variables(model, info, seeds.model_init(config.seed))
  mesh = sharding.make_mesh()
  sharding.assert_same_on_every_process(np.array([len(train_source), len(eval_source)]),
                                        'the number of records (is every host reading the same dataset?)')
  log.info('%s on %s: %s parameters; %d train / %d eval records; %d devices in %d processes; global batch %d '
               '(%d per process)', config.model, config.dataset,
               f'{sum(x.size for x in jax.tree.leaves(variables["params"])):,}', len(train_source),
               len(eval_source), jax.device_count(), jax.process_count(), config.batch_size,
               sharding.local_batch_size(config.batch_size))
  return Setup(info, model, variables, mesh, train_source, eval_source)


def check_input_size(model: nn.Module, info: data.DatasetInfo, model_name: str, dataset: str) -> None:
  """Refuse a model whose layers shrink the dataset's images to nothing (VGG-16's pools on 8x8 digits), naming the
  layer and the input size, before its initialiser divides by zero or its scores turn NaN."""
  emptied = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__' and not emptied:
      emptied.extend(f'{"/".join(context.module.path)} {np.shape(leaf)}' for leaf in jax.tree.leaves(out)
                     if 0 in np.shape(leaf))
    return out

  try:
    with nn.intercept_methods(record):
      jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                     jax.ShapeDtypeStruct((1, *info.input_shape), jnp.float32))
  except ZeroDivisionError:  # an initialiser's fan-in of 0, after the layer recorded below
    if not emptied:
      raise
  if emptied:
    size = 'x'.join(map(str, info.input_shape))
    raise validation.ConfigError(f'config.model={model_name!r} is too deep for the {size} images of '
                                 f'{dataset}: its output at {emptied[0]} is empty; choose a model for inputs '
                                 'this small (small_cnn, lenet300) or a dataset with larger images')
