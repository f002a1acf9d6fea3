"""The deployable files of a network, and reading them back without the training code.

- ``model.stablehlo``: a serialized ``jax.export`` artifact (StableHLO, the batch dimension symbolic), lowered for
  CPU, CUDA and TPU; ``load_exported`` gives a callable ``images -> logits``.
- ``model.onnx``: ONNX through jax2onnx (input ``images``, output ``logits``, the batch dimension symbolic);
  ``load_exported`` gives an onnxruntime callable.
- ``weights.safetensors``: the variables as ``params/<layer>/<name>`` and ``batch_stats/...`` tensors, the weight
  mask of a masked network as ``mask/...`` (uint8), and in the metadata what rebuilds the model (``model``,
  ``num_classes``, ``model_kwargs``, ``input_shape``, JSON-encoded); ``load_exported`` gives
  ``(variables, metadata)``.

ONNX and safetensors need the ``export`` extra (``pip install -e ".[export]"``); StableHLO needs only jax.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from chex import ArrayTree

from prospr_jax import files

FILES = {'stablehlo': 'model.stablehlo', 'onnx': 'model.onnx', 'safetensors': 'weights.safetensors'}
NEEDS = {'stablehlo': (), 'onnx': ('jax2onnx', 'onnxruntime'), 'safetensors': ('safetensors',)}
PLATFORMS = ('cpu', 'cuda', 'tpu')


class MissingExtra(ValueError):
  """A format's packages are not installed; the message names what to install."""


def check_formats(formats: Sequence[str]) -> tuple[str, ...]:
  """``formats`` validated: known names, their packages installed (else one line naming the install)."""
  formats = tuple(formats)
  unknown = [name for name in formats if name not in FILES]
  if unknown or not formats:
    raise ValueError(f'unknown export format(s) {unknown}: choose from {", ".join(FILES)}')
  missing = sorted({package for name in formats for package in NEEDS[name] if not importlib.util.find_spec(package)})
  if missing:
    raise MissingExtra(f'exporting {", ".join(formats)} needs {" and ".join(missing)}: pip install -e ".[export]" '
                       f'(or pip install {" ".join(missing)}), or leave them out with --formats=stablehlo')
  return formats


def write_stablehlo(apply: Callable[[jax.Array], jax.Array], input_shape: Sequence[int],
                    path: pathlib.Path) -> Callable[[Any], np.ndarray]:
  """Serialize ``apply`` for inputs ``(batch, *input_shape)``, any batch; return the artifact read back."""
  batch, = jax.export.symbolic_shape('batch')
  exported = jax.export.export(jax.jit(apply), platforms=PLATFORMS)(
      jax.ShapeDtypeStruct((batch, *input_shape), jnp.float32))
  files.write_bytes(path, exported.serialize())
  return load_exported(path)


def _import_plugins_for_flax() -> None:
  """jax2onnx imports every plugin on its first conversion, its Equinox examples included (about 15 s on a CPU);
  the jax and Flax plugins are all a linen model needs. Skipped where jax2onnx's layout differs."""
  try:
    from jax2onnx.plugins import plugin_system
    root = pathlib.Path(plugin_system.__file__).parent
    if not getattr(plugin_system, '_already_imported_plugins', True):
      for tree in ('jax', 'flax'):
        plugin_system._import_tree(root / tree, f'jax2onnx.plugins.{tree}')  # pylint: disable=protected-access
      plugin_system._already_imported_plugins = True  # pylint: disable=protected-access
  except (ImportError, AttributeError):
    pass


def write_onnx(apply: Callable[[jax.Array], jax.Array], input_shape: Sequence[int], path: pathlib.Path,
               name: str) -> Callable[[Any], np.ndarray]:
  """Convert ``apply`` to ONNX (float32, batch dimension ``batch``); return an onnxruntime session's callable."""
  import jax2onnx
  _import_plugins_for_flax()
  proto = jax2onnx.to_onnx(apply, inputs=[('batch', *input_shape)], model_name=name, input_names=['images'],
                           output_names=['logits'])
  files.write_bytes(path, proto.SerializeToString())
  return load_exported(path)


def hashable(value: Any) -> Any:
  """JSON lists back to tuples: flax modules hash their fields."""
  if isinstance(value, dict):
    return {key: hashable(v) for key, v in value.items()}
  return tuple(hashable(v) for v in value) if isinstance(value, list) else value


def flatten(tree: ArrayTree, prefix: str) -> dict[str, np.ndarray]:
  """``{'<prefix>/<layer>/<name>': array}`` for every leaf that is not None."""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {'/'.join([prefix, *(str(key.key) for key in path)]): np.ascontiguousarray(leaf) for path, leaf in leaves}


def unflatten(flat: dict[str, np.ndarray]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for name, array in flat.items():
    *parents, leaf = name.split('/')
    node = tree
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = array
  return tree


def write_safetensors(variables: ArrayTree, mask: ArrayTree | None, metadata: dict[str, Any],
                      path: pathlib.Path) -> tuple[ArrayTree, dict[str, Any]]:
  """Write the variables (and the mask) with ``metadata``; return the file read back."""
  from safetensors import numpy as st_numpy
  tensors = {}
  for collection, tree in variables.items():
    tensors.update(flatten(jax.device_get(tree), collection))
  if mask is not None:
    tensors.update(flatten(jax.tree.map(lambda m: np.asarray(m, np.uint8), mask), 'mask'))
  encoded = {key: json.dumps(value) for key, value in metadata.items()}
  files.write_bytes(path, st_numpy.save(tensors, metadata=encoded))
  return load_exported(path)


def load_exported(path: str | pathlib.Path) -> Any:
  """Read an exported file back, with no training code.

  ``.stablehlo``: a callable ``images -> logits`` (any batch size; ``jax.export``).
  ``.onnx``: a callable ``images -> logits`` running the model in onnxruntime.
  ``.safetensors``: ``(variables, metadata)``: ``{'params': ..., 'batch_stats': ..., 'mask': ...}`` as nested
  dicts of numpy arrays (``mask`` only for a masked network) and the model's ``model``, ``num_classes``,
  ``model_kwargs`` (lists as tuples), ``input_shape``; ``prospr_jax.models.get_model(metadata['model'],
  metadata['num_classes'], **metadata['model_kwargs'])`` rebuilds the model for
  ``model.apply(variables, images, train=False)``.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f'{path} does not exist: write it with export.py --workdir=<run> first')
  if path.suffix == '.stablehlo':
    call = jax.jit(jax.export.deserialize(bytearray(path.read_bytes())).call)
    return lambda images: call(jnp.asarray(images, jnp.float32))
  if path.suffix == '.onnx':
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # jax2onnx's NHWC shape hints draw harmless merge warnings
    session = onnxruntime.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
    return lambda images: session.run(None, {'images': np.asarray(images, np.float32)})[0]
  if path.suffix == '.safetensors':
    from safetensors import safe_open
    with safe_open(str(path), framework='numpy') as opened:
      flat = {name: opened.get_tensor(name) for name in opened.keys()}
      metadata = {key: json.loads(value) for key, value in (opened.metadata() or {}).items()}
    if 'model_kwargs' in metadata:
      metadata['model_kwargs'] = hashable(metadata['model_kwargs'])  # tuples, as the model's fields
    return unflatten(flat), metadata
  raise ValueError(f'{path}: not an exported file (.stablehlo, .onnx or .safetensors)')
