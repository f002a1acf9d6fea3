"""The network a finished run deploys, in inference mode: the compact network, or the masked one.

A structured run with ``config.prune.compact`` trained a compact network:
``compaction.load_compact`` rebuilds it from ``compact.json`` and its msgpack
variables. Any other run (``prune.py`` with a weight mask, ``train.py`` with a
mask or dense) trained the full-width network with a mask: its model comes from
the workdir's ``config.json`` and its variables and mask from the newest orbax
checkpoint (``pruned/checkpoints`` for ``prune.py``, ``checkpoints`` for
``train.py``), restored into the structure training saved. Every model is built
with plain ``lax`` convolutions, so the exported program runs on any backend.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from chex import ArrayTree

from prospr_jax import files, mask_files, masks as masks_lib, models
from prospr_jax.channels import groups
from prospr_jax.data import info as data_info
from prospr_jax.harness import export_formats, seeds, train_steps
from prospr_jax.harness.records import Recipe
from prospr_jax.models import compaction, plans
from prospr_jax.runtime import checkpointing, workdir as workdir_lib


class NoFinishedRun(FileNotFoundError):
  """The workdir holds no run whose network can be exported; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class Network:
  """A run's network: ``model.apply(variables, images, train=False)`` gives its logits."""
  model: nn.Module
  variables: ArrayTree  # params (pruned weights exactly 0) and batch_stats
  mask: ArrayTree | None  # the weight mask of a masked network (None on unmasked leaves); None for a compact one
  kind: str  # 'compact' or 'masked'
  metadata: dict[str, Any]  # model, num_classes, model_kwargs, input_shape, trained: what rebuilds the model

  @property
  def input_shape(self) -> tuple[int, ...]:
    return tuple(self.metadata['input_shape'])

  def apply(self, images: jax.Array) -> jax.Array:
    return self.model.apply(self.variables, images, train=False)


def load_network(workdir: str | pathlib.Path, trained: bool = True) -> Network:
  """The network of the run in ``workdir``: trained (after its last epoch) or as it started training."""
  workdir = pathlib.Path(workdir)
  if not (workdir / workdir_lib.CONFIG_FILE).exists():
    raise NoFinishedRun(f'{workdir} holds no run ({workdir_lib.CONFIG_FILE} is missing): give the --workdir of a '
                        'prune.py or train.py run')
  config = files.read_json(workdir / workdir_lib.CONFIG_FILE, fix='rerun the run of this workdir')
  if config['prune']['structured'] and config['prune']['compact'] and (workdir / compaction.COMPACT_FILE).exists():
    return _compact(workdir, trained)
  return _masked(workdir, config, trained)


def _compact(workdir: pathlib.Path, trained: bool) -> Network:
  try:
    model, variables = compaction.load_compact(workdir, trained=trained)
  except FileNotFoundError as error:
    raise NoFinishedRun(str(error)) from None
  record = files.read_json(workdir / compaction.COMPACT_FILE, fix='rerun the prune.py command of this workdir')
  metadata = {key: record[key] for key in ('model', 'num_classes', 'model_kwargs', 'input_shape')}
  return Network(model, variables, None, 'compact', {**metadata, 'trained': trained})


def training_folder(workdir: pathlib.Path) -> pathlib.Path:
  """Where the masked network trained: ``pruned/`` of a prune.py workdir, the workdir itself for train.py."""
  return workdir / 'pruned' if (workdir / 'pruned').is_dir() else workdir


def finished_epochs(folder: pathlib.Path) -> int:
  """The last epoch ``folder/metrics.jsonl`` records (0 when none)."""
  path = folder / 'metrics.jsonl'
  if not path.exists():
    return 0
  lines = [line for line in path.read_text().splitlines() if line.strip()]
  return int(files.parse_json_line(lines[-1], path, len(lines), fix='rerun the run')['epoch']) if lines else 0


def _masked(workdir: pathlib.Path, config: dict[str, Any], trained: bool) -> Network:
  folder = training_folder(workdir)
  epochs = finished_epochs(folder)
  if not (folder / 'checkpoints').is_dir() or (trained and (epochs == 0 or epochs < config['num_epochs'])):
    raise NoFinishedRun(f'{workdir} holds no finished run (trained {epochs} of {config["num_epochs"]} epochs in '
                        f'{folder}): rerun its prune.py or train.py command to the end first')
  dataset = data_info.get_dataset_info(config['dataset'])
  kwargs = export_formats.hashable(config['model_kwargs'])
  model = models.build_model(config['model'], dataset.num_classes, kwargs, 'lax')
  initial = models.init_variables(model, dataset.input_shape, seeds.model_init(config['seed']))
  state, initial_params = _restore(folder, ml_collections.ConfigDict(config), initial,
                                   mask_template(workdir, folder, config, model, initial['params']))
  if trained:
    variables = {**initial, 'params': state.params, 'batch_stats': state.batch_stats}
  else:
    variables = {**initial, 'params': masks_lib.apply_mask(initial_params, state.mask)}
  metadata = {'model': config['model'], 'num_classes': dataset.num_classes, 'model_kwargs': config['model_kwargs'],
              'input_shape': list(dataset.input_shape), 'trained': trained}
  return Network(model, jax.device_get(variables), jax.device_get(state.mask), 'masked', metadata)


def mask_template(workdir: pathlib.Path, folder: pathlib.Path, config: dict[str, Any], model: nn.Module,
                  params: ArrayTree) -> ArrayTree:
  """A mask of the structure training saved: a channel mask expanded to its channels' parameters, else a weight
  mask (ones where prunable; its values come from the checkpoint)."""
  path = workdir / 'mask.npz' if folder != workdir else pathlib.Path(config['mask_path'] or workdir / 'no-mask')
  if not (config['prune']['structured'] and path.exists()):
    return masks_lib.all_ones_mask(params)
  plan = plans.channel_plan(model, params)
  return groups.expand(plan, groups.check_mask(plan, mask_files.read_npz(path)), params)


def _restore(folder: pathlib.Path, config: ml_collections.ConfigDict, initial: ArrayTree,
             mask: ArrayTree) -> tuple[train_steps.TrainState, ArrayTree]:
  """The newest checkpoint's train state and initial params, restored into a template of the saved structure
  (the learning-rate schedule's step count included; its values do not change the structure)."""
  recipe = Recipe.of(config)
  schedule = train_steps.lr_schedule(recipe.learning_rate, 1, recipe.lr_milestones, recipe.lr_decay)
  optimizer = train_steps.make_optimizer(learning_rate=schedule, momentum=recipe.momentum,
                                         weight_decay=recipe.weight_decay)
  template = train_steps.create_train_state(initial, mask, optimizer, seeds.train_dropout(config.seed))
  checkpointer = checkpointing.Checkpointer(folder / 'checkpoints')
  try:
    state, initial_params, _ = checkpointer.restore(template, initial['params'])
  finally:
    checkpointer.close()
  state = state.replace(mask=jax.tree.map(lambda m: np.asarray(m, bool), state.mask))
  return state, initial_params
