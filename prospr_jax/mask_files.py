"""Mask files: ``{layer_name: array}`` as an ``.npz`` at a local or cloud path, checked against the model on load."""

from __future__ import annotations

import io
import os
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from chex import ArrayTree
from etils import epath

from prospr_jax import files
from prospr_jax.masks import apply_mask, masks_from_mapping, named_leaves, unique_named_leaves


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
  np.savez(buffer, **{name: _storable(m) for name, m in unique_named_leaves(masks)})
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


def checksum(masks: ArrayTree) -> np.ndarray:
  """Per layer: the kept count and a position-weighted sum of the kept entries (int64): equal on every process
  that computed the same mask."""
  rows = []
  for _, m in named_leaves(masks):
    flat = np.asarray(m).ravel()
    kept = np.flatnonzero(flat).astype(np.int64)
    rows.append([kept.size, int(np.sum((kept * 2654435761) % 1_000_000_007))])
  return np.asarray(rows, np.int64)
