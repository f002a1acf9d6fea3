"""Files that are whole or absent: every write goes to a temporary name in the same folder, then a rename.

A run killed mid-write leaves the previous file (or none), never half of one.
Paths are ``etils.epath`` paths, so the same calls write locally or to cloud
storage. JSON is strict: NaN and Infinity are written as ``null``, so every
file parses as JSON.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from typing import Any

from etils import epath

PathLike = str | os.PathLike[str]


def write_bytes(path: PathLike, data: bytes) -> None:
  """Write ``data`` to ``path`` atomically (temporary file in the same folder, then rename)."""
  path = epath.Path(path)
  temporary = path.parent / f'.{path.name}.{uuid.uuid4().hex[:8]}.tmp'
  temporary.write_bytes(data)
  temporary.replace(path)


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
