"""Mask pytrees: which leaves are prunable, all-ones masks, applying a mask, rebuilding one from names.

A mask (or score) tree mirrors the params tree: an array where a leaf is
prunable and ``None`` elsewhere, so always map with
``jax.tree.map(f, masks, params, is_leaf=is_none)``. A mask entry covers one
weight, or one output channel (the last axis of an HWIO or (in, out) kernel)
when the mask has shape ``(C_out,)``. Thresholding scores into a mask is ``topk.py``; files are ``mask_files.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from chex import ArrayTree

Path = tuple[str, ...]
Prunable = Callable[[Path, Any], bool]


def is_none(x: Any) -> bool:
  """`is_leaf` for mask and score trees, whose unpruned leaves are ``None``."""
  return x is None


def default_prunable(path: Path, leaf: Any) -> bool:
  """Kernels are prunable, biases and normalisation parameters are not: ``leaf.ndim > 1``."""
  del path
  return jnp.ndim(leaf) > 1


def path_names(path: tuple[Any, ...]) -> Path:
  """A jax key path as a tuple of plain strings, e.g. ``('conv1', 'kernel')``."""
  return tuple(str(jax.tree_util.keystr((key,), simple=True)) for key in path)


def layer_name(path: tuple[Any, ...]) -> str:
  """A key path as one readable name, e.g. ``'conv1/kernel'``."""
  return '/'.join(path_names(path))


def named_leaves(tree: ArrayTree) -> list[tuple[str, Any]]:
  """(name, leaf) for every non-``None`` leaf of a mask or score tree, in tree order."""
  leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=is_none)
  return [(layer_name(path), leaf) for path, leaf in leaves if leaf is not None]


def mask_shape(leaf_shape: tuple[int, ...], structured: bool) -> tuple[int, ...]:
  """One entry per weight, or per output channel (the kernel's last axis)."""
  return (leaf_shape[-1],) if structured else tuple(leaf_shape)


def ones_mask(
    params: ArrayTree,
    *,
    prunable: Prunable | None = None,
    structured: bool = False,
) -> ArrayTree:
  """The all-ones mask ``c`` of paper eq. 3, as a tree: ones where prunable, ``None`` elsewhere.

  Raises ValueError when ``prunable`` selects no leaf.
  """
  prunable = prunable or default_prunable

  def make(path, leaf):
    if not prunable(path_names(path), leaf):
      return None
    if structured and jnp.ndim(leaf) < 1:
      raise ValueError(f'structured pruning needs an output-channel axis; {layer_name(path)} is a scalar')
    return jnp.ones(mask_shape(jnp.shape(leaf), structured), jnp.result_type(leaf))

  masks = jax.tree_util.tree_map_with_path(make, params)
  if not jax.tree.leaves(masks):
    names = [layer_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    raise ValueError(
        'prunable selects no parameter, so there is nothing to score. It is called as prunable(path, leaf) '
        f'with paths like {names[:3]}; the default keeps leaves with ndim > 1.')
  return masks


def all_ones_mask(params: ArrayTree) -> ArrayTree:
  """The dense network's mask: every prunable leaf kept (bool)."""
  return jax.tree.map(lambda m: jnp.ones(m.shape, bool), ones_mask(params))


def check_same_structure(masks: ArrayTree, params: ArrayTree, what: str = 'masks') -> None:
  """Raise ValueError unless ``masks`` mirrors ``params`` (``None`` on unmasked leaves)."""
  mask_def = jax.tree.structure(masks, is_leaf=is_none)
  param_def = jax.tree.structure(params)
  if mask_def != param_def:
    raise ValueError(
        f'{what} and params have different structures: {what} must mirror params with None on unmasked '
        f'leaves (build them from the same params).\n  {what}: {mask_def}\n  params: {param_def}')


def _param_names(path: tuple[Any, ...]) -> str:
  """A param leaf's layer name; the ``.value`` of a Flax NNX ``Variable`` (in ``nnx.state``) is not part of it."""
  last = path[-1] if path else None
  if isinstance(last, jax.tree_util.GetAttrKey) and last.name == 'value':
    path = path[:-1]
  return layer_name(path)


def mask_leaves(masks: ArrayTree, params: ArrayTree) -> list[Any]:
  """One mask entry (or ``None``) per leaf of ``params``, in its order.

  ``masks`` mirrors ``params``, or holds the same layer names in another container: the pure dict of scores
  from an NNX module against its ``nnx.state(model, nnx.Param)``. ValueError otherwise.
  """
  if jax.tree.structure(masks, is_leaf=is_none) == jax.tree.structure(params):
    return jax.tree.leaves(masks, is_leaf=is_none)
  by_name = {layer_name(path): mask for path, mask in jax.tree_util.tree_leaves_with_path(masks, is_leaf=is_none)}
  names = [_param_names(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
  if sorted(names) != sorted(by_name):
    check_same_structure(masks, params)
  return [by_name[name] for name in names]


def apply_mask(params: ArrayTree, masks: ArrayTree) -> ArrayTree:
  """``params * masks`` leaf by leaf; a ``(C_out,)`` mask zeroes whole output channels.

  ``params`` may be an ``nnx.State`` (``nnx.update(model, apply_mask(nnx.state(model, nnx.Param), masks))``).
  """
  def apply(path, mask, param):
    if mask is None:
      return param
    if jnp.shape(mask) not in (jnp.shape(param), jnp.shape(param)[-1:]):
      raise ValueError(
          f'the mask of {_param_names(path)} has shape {jnp.shape(mask)}, which does not fit its parameter of shape '
          f'{jnp.shape(param)}: use the parameter\'s shape, or (C_out,) for one entry per output channel')
    return param * jnp.asarray(mask).astype(jnp.result_type(param))

  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  masked = [apply(path, mask, param) for mask, (path, param) in zip(mask_leaves(masks, params), leaves)]
  return jax.tree.unflatten(treedef, masked)


def masks_from_mapping(mapping: Mapping[str, Any], params: ArrayTree) -> ArrayTree:
  """Rebuild a mask tree from ``{layer_name: array}`` (e.g. a loaded ``.npz``), ``None`` elsewhere."""
  def take(path, _):
    return None if layer_name(path) not in mapping else jnp.asarray(mapping[layer_name(path)])
  masks = jax.tree_util.tree_map_with_path(take, params)
  unique_named_leaves(masks)
  unknown = set(mapping) - {name for name, _ in named_leaves(masks)}
  if unknown:
    raise ValueError(f'mask names {sorted(unknown)} are not parameters of this model')
  return masks


def unique_named_leaves(tree: ArrayTree) -> list[tuple[str, Any]]:
  """``named_leaves``, refusing two leaves of one name (``{'a/b': x, 'a': {'b': y}}``): a file cannot tell them
  apart."""
  items = named_leaves(tree)
  names = [name for name, _ in items]
  clashing = sorted({name for name in names if names.count(name) > 1})
  if clashing:
    raise ValueError(f'two leaves are both named {", ".join(clashing)} (a key holding "/" and a nested path): a mask '
                     'file cannot tell them apart; rename the key without "/"')
  return items


_MOVED_NAMES = {name: 'topk' for name in ('LayerCollapseError', 'check_sparsity', 'num_to_keep', 'check_finite_scores',
                                          'global_topk_mask', 'layerwise_topk_mask')}
_MOVED_NAMES.update({name: 'mask_files' for name in ('save_masks', 'load_masks', 'read_npz')})


def __getattr__(name: str) -> Any:
  """Thresholding and mask files moved to ``topk`` and ``mask_files``: their old names here still work, with a
  DeprecationWarning."""
  if name in _MOVED_NAMES:
    import importlib
    import warnings
    new = f'prospr_jax.{_MOVED_NAMES[name]}'
    warnings.warn(f'prospr_jax.masks.{name} moved to {new}.{name}', DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(new), name)
  raise AttributeError(f'module prospr_jax.masks has no attribute {name!r}')
