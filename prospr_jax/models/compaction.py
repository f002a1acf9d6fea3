"""Compaction: a structured (channel) mask turns a network into a narrower one of the same family.

``compact(model, variables, mask)`` drops every removed channel from the
variables (kernel slices on both axes, biases, BatchNorm scale, offset and
statistics) and sets the model's width fields to what is kept. The compact
network computes what the masked one computes: exactly in eval mode, and in
train mode too, since BatchNorm's batch statistics of the kept channels are the
same (dead channels are dropped, not zero). ``save_compact`` / ``load_compact``
write and read it so it can be rebuilt anywhere with ``get_model``: the weights
training starts from (written before it), or with ``trained=True`` the trained
ones (``save_trained``, written by a run after training; ``train_loop.export_trained``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import flax.serialization
import jax
import numpy as np
from chex import ArrayTree
from etils import epath

from prospr_jax import files
from prospr_jax.channels import groups
from prospr_jax.models import get_model, plans

COMPACT_FILE = 'compact.json'
VARIABLES_FILE = 'compact_variables.msgpack'  # the weights training starts from
TRAINED_FILE = 'compact_variables_trained.msgpack'  # after the run's last epoch


def structured_plan(model: nn.Module, params: ArrayTree) -> groups.ChannelPlan:
  """The channel plan of a zoo model (``models/plans.py``); ValueError for an architecture it does not know."""
  return plans.channel_plan(model, params)


def compact(model: nn.Module, variables: ArrayTree, mask: Mapping[str, Any]) -> tuple[nn.Module, ArrayTree]:
  """``(narrow model, its variables)`` computing what ``model`` with the channel ``mask`` computes.

  ``mask``: ``{group name: (channels,) 0/1}`` (or a per-kernel ``(C_out,)`` tree, for
  nets without ties). Refused with a ValueError: a mask from another model, a
  per-weight mask, one that empties a layer, an architecture without a plan.
  """
  plan = structured_plan(model, variables['params'])
  mask = groups.check_mask(plan, mask)
  narrow = plans.narrowed(model, variables['params'], mask)
  return narrow, groups.compact_tree(plan, mask, variables)


def check_shapes(model: nn.Module, variables: ArrayTree, input_shape: tuple[int, ...]) -> None:
  """Raise ValueError unless ``variables`` have the shapes ``model.init`` gives for ``input_shape``."""
  want = jax.tree.map(np.shape, plans.abstract_variables(model, input_shape))
  got = jax.tree.map(np.shape, variables)
  if want != got:
    raise ValueError(f'compact variables do not fit the compact model: {got} against {want}')


def _tuples(value: Any) -> Any:
  """JSON lists back to tuples: flax modules hash their fields."""
  return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def compact_kwargs(model: nn.Module) -> dict[str, Any]:
  """The width fields of a compact zoo model, as JSON-ready lists and ints."""
  return json.loads(json.dumps(plans.width_fields(model)))


def save_compact(directory: str | os.PathLike[str], model_name: str, num_classes: int, model_kwargs: dict[str, Any],
                 narrow: nn.Module, variables: ArrayTree, **extra: Any) -> None:
  """Write ``compact.json`` (model name, classes, kwargs with the widths) and the variables (msgpack)."""
  directory = epath.Path(directory)
  files.write_bytes(directory / VARIABLES_FILE, flax.serialization.msgpack_serialize(jax.device_get(variables)))
  files.write_json(directory / COMPACT_FILE, {
      'model': model_name, 'num_classes': num_classes,
      'model_kwargs': {**model_kwargs, **compact_kwargs(narrow)}, **extra})


def save_trained(directory: str | os.PathLike[str], variables: ArrayTree) -> None:
  """Write the compact network's trained variables next to ``compact.json`` (``load_compact(trained=True)``)."""
  payload = flax.serialization.msgpack_serialize(jax.device_get(variables))
  files.write_bytes(epath.Path(directory) / TRAINED_FILE, payload)


def load_compact(directory: str | os.PathLike[str], trained: bool = False,
                 **model_overrides: Any) -> tuple[nn.Module, ArrayTree]:
  """``(model, variables)`` of a compact network saved by ``save_compact`` (e.g. a prune.py workdir).

  ``trained=False``: the variables the compact network starts training from
  (its initialization; ``compact_variables.msgpack``, written before training).
  ``trained=True``: the variables after the run's last epoch (``compact_variables_trained.msgpack``,
  written when training ends; FileNotFoundError if the run trained nothing yet).
  ``model_overrides`` go to ``get_model`` too (e.g. ``conv_general_dilated=``).
  The variables must have the shapes of the model ``compact.json`` describes (for its recorded input shape).
  """
  directory = epath.Path(directory)
  if not (directory / COMPACT_FILE).exists():
    raise FileNotFoundError(f'{directory / COMPACT_FILE} does not exist: give the workdir of a structured '
                            'prune.py run with config.prune.compact=True')
  rerun = 'rerun the prune.py command of this workdir to write it again'
  record = files.read_json(directory / COMPACT_FILE, required=('model', 'num_classes', 'model_kwargs'), fix=rerun)
  kwargs = {key: _tuples(value) for key, value in record['model_kwargs'].items()}
  model = get_model(record['model'], record['num_classes'], **kwargs, **model_overrides)
  path = directory / (TRAINED_FILE if trained else VARIABLES_FILE)
  if trained and not path.exists():
    raise FileNotFoundError(f'{directory} holds no trained compact variables ({TRAINED_FILE}): the run has not '
                            'finished its epochs (config.num_epochs=0, or it was stopped before its end; rerun it to '
                            'finish)')
  if not path.exists():
    raise FileNotFoundError(f'{path} does not exist: {rerun}')
  variables = files.read_msgpack(path, fix=f'it is corrupt; delete it and {rerun}')
  if 'input_shape' in record:
    try:
      check_shapes(model, variables, tuple(record['input_shape']))
    except ValueError:
      raise ValueError(f'{path} does not fit the compact network of {directory / COMPACT_FILE} (other shapes): the '
                       f'files come from different runs; delete {path.name} and {rerun}') from None
  return model, variables
