"""The IDX file format of MNIST and Fashion-MNIST (LeCun et al.), plain or gzip-compressed.

A file is a big-endian header, ``0 0 <type> <ndim>`` then ``ndim`` int32 sizes,
followed by the values. We read unsigned bytes (type 0x08) only, which is what
both datasets use, and check that the body holds exactly the declared number.
"""

from __future__ import annotations

import gzip
import os
import pathlib

import numpy as np

UBYTE = 0x08
GZIP_MAGIC = b'\x1f\x8b'


class IdxFormatError(ValueError):
  """A file is not a well-formed IDX file of unsigned bytes; the message names the file."""


def _read_bytes(path: pathlib.Path) -> bytes:
  with open(path, 'rb') as f:
    raw = f.read()
  if raw[:2] != GZIP_MAGIC:
    return raw
  try:
    return gzip.decompress(raw)
  except (OSError, EOFError) as error:
    raise IdxFormatError(f'{path}: corrupt gzip stream ({error}); download the file again') from error


def parse_idx(raw: bytes, name: str = '<bytes>') -> np.ndarray:
  """The uint8 array in IDX bytes ``raw``; ``name`` is used in errors."""
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
    raise IdxFormatError(f'{name}: not an IDX file (magic number {raw[:4].hex() or "missing"}, '
                         'expected 0000 then type and rank)')
  if raw[2] != UBYTE:
    raise IdxFormatError(f'{name}: IDX type 0x{raw[2]:02x}, expected 0x08 (unsigned bytes)')
  ndim = raw[3]
  body = 4 + 4 * ndim
  if len(raw) < body:
    raise IdxFormatError(f'{name}: header truncated ({len(raw)} bytes, rank {ndim} needs {body})')
  shape = tuple(int(d) for d in np.frombuffer(raw, '>u4', count=ndim, offset=4))
  expected = int(np.prod(shape))
  if len(raw) - body != expected:
    raise IdxFormatError(f'{name}: header declares shape {shape} ({expected:,} bytes) but the file holds '
                         f'{len(raw) - body:,}; the file is truncated or corrupt')
  return np.frombuffer(raw, np.uint8, offset=body).reshape(shape)


def read_idx(path: str | os.PathLike[str], ndim: int | None = None) -> np.ndarray:
  """The uint8 array in the IDX file at ``path`` (gzip or plain); ``ndim``: the rank it must have."""
  path = pathlib.Path(path)
  array = parse_idx(_read_bytes(path), str(path))
  if ndim is not None and array.ndim != ndim:
    raise IdxFormatError(f'{path}: an IDX file of rank {array.ndim} (shape {array.shape}), expected rank {ndim}')
  return array
