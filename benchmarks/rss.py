"""Peak resident memory of this process, whole or from a point on (Linux).

``ru_maxrss`` is the peak over the process's life, compilation included. Writing ``5`` to
``/proc/self/clear_refs`` resets the kernel's high-water mark (``VmHWM``), so the peak of a program's runs can be
read apart from the compiler's.
"""

from __future__ import annotations

import pathlib
import resource


def peak_rss_bytes() -> int:
  """The process's peak RSS since it started."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def reset_peak() -> bool:
  """Start a new high-water mark at the current RSS; False where the kernel does not allow it."""
  try:
    pathlib.Path('/proc/self/clear_refs').write_text('5')
  except OSError:
    return False
  return True


def peak_since_reset_bytes() -> int | None:
  """``VmHWM``: the peak RSS since ``reset_peak`` (or since the start); None off Linux."""
  try:
    status = pathlib.Path('/proc/self/status').read_text()
  except OSError:
    return None
  line = next((line for line in status.splitlines() if line.startswith('VmHWM:')), None)
  return int(line.split()[1]) * 1024 if line else None
