"""Mask pytrees: which leaves are prunable, top-k thresholding, applying a mask, saving and loading.

A mask (or score) tree mirrors the params tree: an array where a leaf is
prunable and ``None`` elsewhere, so always map with
``jax.tree.map(f, masks, params, is_leaf=is_none)``. A mask entry covers one
weight, or one output channel (the last axis of an HWIO or (in, out) kernel)
when the mask has shape ``(C_out,)``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from chex import ArrayTree
from etils import epath

from prospr_jax import files

Path = tuple[str, ...]
Prunable = Callable[[Path, Any], bool]


class LayerCollapseError(ValueError):
  """A mask would remove every weight of a layer, disconnecting the network (layer collapse)."""


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


def apply_mask(params: ArrayTree, masks: ArrayTree) -> ArrayTree:
  """``params * masks`` leaf by leaf; a ``(C_out,)`` mask zeroes whole output channels."""
  check_same_structure(masks, params)

  def apply(path, mask, param):
    if mask is None:
      return param
    if jnp.shape(mask) not in (jnp.shape(param), jnp.shape(param)[-1:]):
      raise ValueError(
          f'the mask of {layer_name(path)} has shape {jnp.shape(mask)}, which does not fit its parameter of shape '
          f'{jnp.shape(param)}: use the parameter\'s shape, or (C_out,) for one entry per output channel')
    return param * jnp.asarray(mask).astype(jnp.result_type(param))

  return jax.tree_util.tree_map_with_path(apply, masks, params, is_leaf=is_none)


def check_sparsity(sparsity: float) -> float:
  """Return ``sparsity`` if it is a fraction in [0, 1), raise ValueError otherwise."""
  if not (isinstance(sparsity, (int, float, np.floating)) and 0.0 <= float(sparsity) < 1.0):
    raise ValueError(f'sparsity must be in [0, 1) (the fraction of weights to remove), got {sparsity!r}')
  return float(sparsity)


def num_to_keep(total: int, sparsity: float) -> int:
  """``ceil(total * (1 - sparsity))``, robust to float round-off (10 * (1 - 0.7) keeps 3)."""
  return math.ceil(round(total * (1.0 - check_sparsity(sparsity)), 6))


@jax.jit
def _finite_per_leaf(leaves: list[jax.Array]) -> jax.Array:
  return jnp.stack([jnp.all(jnp.isfinite(s)) for s in leaves])


def check_finite_scores(scores: ArrayTree, hint: str = '') -> None:
  """Raise ValueError naming every layer whose scores hold NaN or Inf."""
  items = named_leaves(scores)
  if not items:
    return
  finite = np.asarray(_finite_per_leaf([jnp.asarray(s) for _, s in items]))
  bad = [name for (name, _), ok in zip(items, finite) if not ok]
  if bad:
    raise ValueError(
        f'scores contain NaN or Inf in {", ".join(bad)}. '
        + (hint or 'If they come from ProsPr, the inner loop diverged: try a smaller inner_lr '
                 '(config.prune.inner_lr), and check the inputs hold no NaN.'))


def _ranked_as_computed(leaves: list[Any]) -> contextlib.AbstractContextManager:
  """x64 while ranking float64 scores (``precision='float64'``): in float32 distinct scores could tie."""
  wide = any(np.dtype(getattr(s, 'dtype', None) or np.asarray(s).dtype) == np.float64 for s in leaves)
  wide = wide and not jax.config.jax_enable_x64
  return jax.enable_x64(True) if wide else contextlib.nullcontext()


def _descending_rank(flat: jax.Array) -> jax.Array:
  """Each entry's position from the highest score down; equal scores keep index order."""
  order = jnp.argsort(-flat, stable=True)
  return jnp.zeros(flat.size, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))


def _split_like(flat: jax.Array, leaves: list[jax.Array]) -> list[jax.Array]:
  pieces = jnp.split(flat, np.cumsum([s.size for s in leaves])[:-1])
  return [p.reshape(s.shape) for p, s in zip(pieces, leaves)]


@functools.partial(jax.jit, static_argnames=('keep_one_per_layer',))
def _global_keep(leaves: list[jax.Array], k: jax.Array, keep_one_per_layer: bool) -> list[jax.Array]:
  """Top-``k`` over the concatenated leaves (``k`` traced: one compile for every sparsity)."""
  flat = jnp.concatenate([jnp.ravel(s) for s in leaves])
  rank = _descending_rank(flat)
  if not keep_one_per_layer:
    return _split_like(rank < k, leaves)
  # Every layer first keeps its best entry; the other k - L slots go by global rank.
  offsets = np.concatenate([[0], np.cumsum([s.size for s in leaves])[:-1]])
  best = jnp.asarray(offsets) + jnp.stack([jnp.argmax(jnp.ravel(s)) for s in leaves])
  reserved = jnp.zeros(flat.size, bool).at[best].set(True)
  order = jnp.argsort(rank)
  reserved_ranked = reserved[order]
  filled = (jnp.cumsum(~reserved_ranked) <= k - len(leaves)) & ~reserved_ranked
  keep = jnp.zeros(flat.size, bool).at[order].set(reserved_ranked | filled)
  return _split_like(keep, leaves)


def _mask_tree(scores: ArrayTree, kept_leaves: list[jax.Array]) -> ArrayTree:
  kept = iter(kept_leaves)
  return jax.tree.map(lambda s: None if s is None else next(kept), scores, is_leaf=is_none)


def global_topk_mask(scores: ArrayTree, sparsity: float, *, keep_one_per_layer: bool = False) -> ArrayTree:
  """Keep the ``ceil(N * (1 - sparsity))`` highest scores over all layers (paper Alg. 1, lines 11-12).

  Ties are broken by index (tree order, then row-major), so the kept count is
  exact. A mask that would empty a layer is refused with a ValueError naming
  the layers, unless ``keep_one_per_layer``: then every layer first keeps its
  best entry and the rest of the budget goes by global rank (the same mask as
  plain top-k whenever that empties no layer). Returns a tree of bool arrays.
  Runs eagerly (it checks values), not under ``jax.jit``.
  """
  items = named_leaves(scores)
  if not items:
    raise ValueError('scores hold no array: every leaf is None, so there is nothing to threshold')
  check_finite_scores(scores)
  names, leaves = zip(*items)
  k = num_to_keep(sum(np.size(s) for s in leaves), sparsity)
  if keep_one_per_layer and k < len(leaves):
    raise ValueError(f'cannot keep one entry in each of {len(leaves)} layers with only {k} to keep '
                     f'(sparsity {sparsity}): lower the sparsity')
  with _ranked_as_computed(leaves):
    kept = _global_keep([jnp.asarray(s) for s in leaves], jnp.int32(k), keep_one_per_layer)
  emptied = [name for name, any_kept in zip(names, np.asarray(jnp.stack([jnp.any(m) for m in kept])))
             if not any_kept]
  if emptied:
    raise LayerCollapseError(
        f'a global top-k mask at sparsity {sparsity} would remove every weight of {", ".join(emptied)}, '
        'disconnecting the network. Lower the sparsity, or keep one weight per layer (keep_one_per_layer=True; in a '
        'config, config.prune.keep_one_per_layer=True).')
  return _mask_tree(scores, kept)


@jax.jit
def _layerwise_keep(leaves: list[jax.Array], counts: list[jax.Array]) -> list[jax.Array]:
  return [(_descending_rank(jnp.ravel(s)) < c).reshape(s.shape) for s, c in zip(leaves, counts)]


def layerwise_topk_mask(scores: ArrayTree, sparsity: float | ArrayTree | None = None, *,
                        keep_counts: ArrayTree | None = None) -> ArrayTree:
  """Keep the highest scores inside each layer, ties by index.

  ``sparsity`` is one fraction for all layers (each keeps ``ceil(n_l * (1 - s))``)
  or a tree mirroring ``scores`` with one fraction per layer; ``keep_counts`` is
  such a tree of exact integer counts instead.
  """
  check_finite_scores(scores)
  if (sparsity is None) == (keep_counts is None):
    raise ValueError('pass exactly one of sparsity and keep_counts')
  if keep_counts is None:
    if isinstance(sparsity, (int, float, np.floating)):
      sparsity = jax.tree.map(lambda s: None if s is None else sparsity, scores, is_leaf=is_none)
    check_same_structure(sparsity, jax.tree.map(lambda s: 0, scores, is_leaf=is_none), 'sparsity')
    keep_counts = jax.tree.map(lambda s, sp: None if s is None else num_to_keep(s.size, sp), scores, sparsity,
                               is_leaf=is_none)
  leaves = [s for _, s in named_leaves(scores)]
  counts = [jnp.int32(c) for _, c in named_leaves(keep_counts)]
  with _ranked_as_computed(leaves):
    return _mask_tree(scores, _layerwise_keep([jnp.asarray(s) for s in leaves], counts))


def masks_from_mapping(mapping: Mapping[str, Any], params: ArrayTree) -> ArrayTree:
  """Rebuild a mask tree from ``{layer_name: array}`` (e.g. a loaded ``.npz``), ``None`` elsewhere."""
  def take(path, _):
    return None if layer_name(path) not in mapping else jnp.asarray(mapping[layer_name(path)])
  masks = jax.tree_util.tree_map_with_path(take, params)
  _unique_names(masks)
  unknown = set(mapping) - {name for name, _ in named_leaves(masks)}
  if unknown:
    raise ValueError(f'mask names {sorted(unknown)} are not parameters of this model')
  return masks


def _unique_names(tree: ArrayTree) -> list[tuple[str, Any]]:
  """``named_leaves``, refusing two leaves of one name (``{'a/b': x, 'a': {'b': y}}``): a file cannot tell them
  apart."""
  items = named_leaves(tree)
  names = [name for name, _ in items]
  clashing = sorted({name for name in names if names.count(name) > 1})
  if clashing:
    raise ValueError(f'two leaves are both named {", ".join(clashing)} (a key holding "/" and a nested path): a mask '
                     'file cannot tell them apart; rename the key without "/"')
  return items


def _storable(array: Any) -> np.ndarray:
  """A mask as bool (any 0/1 array, bfloat16 too); other values (scores) in a dtype ``np.load`` reads back."""
  array = np.asarray(array)
  if array.dtype != bool and np.isin(array, (0, 1)).all():
    return array.astype(bool)
  return array if array.dtype.kind in 'biuf' else array.astype(np.float32)  # bfloat16's kind is 'V' (void)


def save_masks(path: str | os.PathLike[str], masks: ArrayTree) -> None:
  """Write ``{layer_name: array}`` as an ``.npz`` at a local or cloud path, atomically: masks as bool, scores in a
  NumPy dtype (float32 for bfloat16); two leaves of one name are refused."""
  buffer = io.BytesIO()
  np.savez(buffer, **{name: _storable(m) for name, m in _unique_names(masks)})
  files.write_bytes(path, buffer.getvalue())


def read_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
  """``{name: array}`` of a mask file; FileNotFoundError or ValueError saying what to give instead."""
  path = epath.Path(path)
  if not path.exists() or path.is_dir():
    raise FileNotFoundError(f'mask file {path} {"is a folder" if path.exists() else "does not exist"}: give the '
                            'mask.npz that prune.py wrote (or save_masks)')
  try:
    with path.open('rb') as f:
      raw = f.read()
    if not raw.startswith(b'PK'):  # an .npz is a zip archive; anything else (an .npy, text) is not
      raise ValueError('not an .npz (zip) archive')
    saved = np.load(io.BytesIO(raw), allow_pickle=False)
    if not isinstance(saved, np.lib.npyio.NpzFile):
      raise ValueError('a single array, not an .npz of named layers')
    with saved:
      return {name: saved[name] for name in saved.files}
  except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
    raise ValueError(f'mask file {path} is not a readable .npz of layer masks ({error}): give the mask.npz '
                     'that prune.py wrote (or save_masks)') from None


def load_masks(path: str | os.PathLike[str], params: ArrayTree, *, template: ArrayTree | None = None) -> ArrayTree:
  """A mask saved by ``save_masks``, as a bool tree mirroring ``params``; refuses one that does not fit.

  Every entry must be 0 or 1 and fit its parameter (its shape, or ``(C_out,)``).
  With ``template`` (a mask tree such as ``ones_mask(params)``) the file must
  name exactly the template's layers with the template's shapes, so no layer
  silently trains dense.
  """
  saved = read_npz(path)
  if not saved:
    raise ValueError(f'mask file {path} holds no layer: it is empty')
  not_binary = [name for name, m in saved.items() if not np.isin(m, (0, 1)).all()]
  if not_binary:
    raise ValueError(f'mask file {path} holds values other than 0 and 1 in {", ".join(not_binary)}: is it a '
                     'scores file? Give the mask.npz')
  masks = masks_from_mapping({name: m.astype(bool) for name, m in saved.items()}, params)
  apply_mask(params, masks)  # refuses a shape that fits no parameter, naming both shapes
  if template is not None:
    wanted = {name: np.shape(m) for name, m in named_leaves(template)}
    got = {name: np.shape(m) for name, m in saved.items()}
    missing = sorted(set(wanted) - set(got))
    extra = sorted(set(got) - set(wanted))
    wrong = sorted(name for name in set(wanted) & set(got) if wanted[name] != got[name])
    if missing or extra or wrong:
      details = '; '.join(part for part in (
          missing and f'missing {", ".join(missing)}', extra and f'not prunable here {", ".join(extra)}',
          wrong and 'wrong shape ' + ', '.join(f'{n} {got[n]} (want {wanted[n]})' for n in wrong)) if part)
      raise ValueError(f'mask file {path} does not fit this model: {details}')
  return jax.tree.map(jnp.asarray, masks)
