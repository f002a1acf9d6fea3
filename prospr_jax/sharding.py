"""One code path from one CPU to a pod: a ('data',) mesh over all devices, batches split, params replicated."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any


def make_mesh() -> Mesh:
  """A one-axis mesh named 'data' over every device of every process.

  Auto axes: XLA propagates the batch sharding through any model code (Explicit
  axes would make every reshape of a sharded batch state its output sharding).
  """
  return jax.make_mesh((jax.device_count(),), ('data',), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def data_sharded(mesh: Mesh) -> NamedSharding:
  """Split the leading (batch) axis over the 'data' axis."""
  return NamedSharding(mesh, PartitionSpec('data'))


def check_global_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """The per-process batch size; refuse a global batch that devices or processes cannot split evenly."""
  devices, processes = mesh.devices.size, jax.process_count()
  if global_batch_size % devices:
    raise ValueError(f'global batch size {global_batch_size} is not divisible by the {devices} devices: '
                     f'use a multiple of {devices}')
  return global_batch_size // processes


def global_batch(local_batch: PyTree, mesh: Mesh) -> PyTree:
  """Assemble each process's share of a batch into global arrays split over the 'data' axis."""
  sharding = data_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  return jax.device_put(tree, replicated(mesh))
