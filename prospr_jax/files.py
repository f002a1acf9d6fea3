"""Files that are whole or absent: every write goes to a temporary name in the same folder, then a rename.

A run killed mid-write leaves the previous file (or none), never half of one;
a failed write (a full disk) removes its temporary file, and one that cannot
write names the file. Paths are ``etils.epath`` paths, so the same calls write
locally or to cloud storage. JSON is strict: NaN and Infinity are written as
``null``, so every file parses as JSON; ``read_json`` names the file it cannot
read and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import uuid
from collections.abc import Iterable
from typing import Any

from etils import epath

PathLike = str | os.PathLike[str]


def write_bytes(path: PathLike, data: bytes) -> None:
  """Write ``data`` to ``path`` atomically (temporary file in the same folder, then rename)."""
  path = epath.Path(path)
  temporary = path.parent / f'.{path.name}.{uuid.uuid4().hex[:8]}.tmp'
  try:
    temporary.write_bytes(data)
    temporary.replace(path)
  except BaseException as error:
    with contextlib.suppress(OSError):
      temporary.unlink(missing_ok=True)
    if isinstance(error, OSError) and error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
      raise PermissionError(f'{path} cannot be written ({error.strerror}): make its folder writable, or give '
                            'another --workdir') from error
    raise


def write_text(path: PathLike, text: str) -> None:
  write_bytes(path, text.encode())


def finite_or_none(value: Any) -> Any:
  """``value`` with every non-finite float replaced by ``None`` (strict JSON has no NaN)."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {key: finite_or_none(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [finite_or_none(item) for item in value]
  return value


def json_dumps(value: Any, **kwargs: Any) -> str:
  """Strict JSON (``allow_nan=False``), non-finite floats as ``null``."""
  return json.dumps(finite_or_none(value), allow_nan=False, **kwargs)


def write_json(path: PathLike, value: Any) -> None:
  write_text(path, json_dumps(value, indent=2) + '\n')


class UnreadableFileError(ValueError):
  """A file of the workdir that does not parse or lacks what it must hold; the message names it and the fix."""


def read_json(path: PathLike, *, required: Iterable[str] = (), fix: str = 'delete it and rerun') -> Any:
  """The JSON value in ``path``; ``UnreadableFileError`` naming the file (and a missing ``required`` key) and
  ``fix``."""
  path = epath.Path(path)
  try:
    value = json.loads(path.read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as error:
    raise UnreadableFileError(f'{path} is not valid JSON ({error}): it is corrupt; {fix}') from None
  missing = [key for key in required if not isinstance(value, dict) or key not in value]
  if missing:
    raise UnreadableFileError(f'{path} lacks {", ".join(map(repr, missing))}: it is corrupt or not this file; {fix}')
  return value


def parse_json_line(line: str, path: PathLike, number: int, *, fix: str) -> Any:
  """Line ``number`` of the JSON-lines file ``path``; ``UnreadableFileError`` naming the file and the line."""
  try:
    return json.loads(line)
  except json.JSONDecodeError as error:
    raise UnreadableFileError(f'line {number} of {path} is not valid JSON ({error}): {fix}') from None


def read_msgpack(path: PathLike, target: Any = None, *, fix: str) -> Any:
  """Flax msgpack in ``path`` (into ``target``'s structure if given); ``UnreadableFileError`` naming the file."""
  import flax.serialization  # pylint: disable=import-outside-toplevel  (only the readers of msgpack files need it)
  path = epath.Path(path)
  try:
    data = path.read_bytes()
    return flax.serialization.msgpack_restore(data) if target is None else flax.serialization.from_bytes(target, data)
  except Exception as error:  # pylint: disable=broad-except  (msgpack and flax raise many kinds on a bad file)
    if isinstance(error, OSError):
      raise
    raise UnreadableFileError(f'{path} is not readable msgpack of the expected variables ({type(error).__name__}): '
                              f'{fix}') from None
