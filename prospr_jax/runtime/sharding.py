"""One code path from one CPU to a pod: a ('data',) mesh over all devices, batches split, params replicated."""

from __future__ import annotations

import jax
import numpy as np
from chex import ArrayTree
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec


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


def local_batch_size(global_batch_size: int, *, devices: int | None = None, processes: int | None = None) -> int:
  """This process's share of a global batch; refuse one that the devices (and so the processes) cannot split.

  ``devices`` and ``processes`` default to this run's; the one check of batch
  divisibility, used by the config check, the pipelines and the sampler.
  """
  devices = jax.device_count() if devices is None else devices
  processes = jax.process_count() if processes is None else processes
  if global_batch_size <= 0:
    raise ValueError(f'a batch size must be positive, got {global_batch_size}')
  for parts, what in ((devices, 'devices'), (processes, 'processes')):
    if global_batch_size % parts:
      raise ValueError(f'global batch size {global_batch_size} is not divisible by {parts} {what}: '
                       f'use a multiple of {parts}')
  return global_batch_size // processes


def global_batch(local_batch: ArrayTree, mesh: Mesh) -> ArrayTree:
  """Assemble each process's share of a batch into global arrays split over the 'data' axis."""
  sharding = data_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def replicate(tree: ArrayTree, mesh: Mesh) -> ArrayTree:
  """Copy a tree that every process holds in full onto every device of the mesh.

  Built from host values: ``device_put`` cannot move an array committed to one
  local device onto a sharding that spans other processes' devices.
  """
  sharding = replicated(mesh)
  def put(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    value = np.asarray(host_value(x))
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
  return jax.tree.map(put, tree)


def host_value(tree: ArrayTree) -> ArrayTree:
  """Numpy values of (replicated or local) arrays, on every process.

  A replicated global array of a multi-process run is not fully addressable, but
  each process holds the whole value: read it from the local copy.
  """
  def to_host(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if not x.is_fully_replicated:
        raise ValueError('host_value needs replicated arrays; gather sharded ones first')
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)
  return jax.tree.map(to_host, tree)


def assert_same_on_every_process(values: np.ndarray, what: str) -> None:
  """Refuse to go on unless every process holds the same small integer array."""
  if jax.process_count() == 1:
    return
  gathered = multihost_utils.process_allgather(np.asarray(values))
  differing = [p for p in range(len(gathered)) if not np.array_equal(gathered[p], gathered[0])]
  if differing:
    raise RuntimeError(f'{what} differs across processes (process 0 vs {differing}): '
                       f'{[np.asarray(g).tolist() for g in gathered]}')
