"""Hand the heap XLA's compiler freed back to the operating system as soon as a large program is compiled.

glibc keeps the pages ``free`` returns: after compiling a large program (VGG-16's exact ProsPr) the process still
holds the compiler's freed working memory, and the run's buffers come on top of it (``benchmarks/compiler_heap.py``). ``malloc_trim(0)`` returns those pages. prune.py, train.py and sweep.py turn this on;
code that calls ``prospr_saliency`` itself can call ``release_heap_after_compiles()`` once at start-up.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import jax

COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'  # recorded by JAX when XLA has compiled a program

_listener: Callable[..., None] | None = None


def release_freed_heap() -> bool:
  """Return the heap's free pages to the OS (glibc's ``malloc_trim(0)``); False where the C library has none."""
  try:
    trim = getattr(ctypes.CDLL(None), 'malloc_trim', None)
  except (OSError, TypeError):  # no C library to open by this name (Windows)
    return False
  if trim is None:  # macOS, musl: their allocators return memory themselves
    return False
  trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
  trim(0)
  return True


def release_heap_after_compiles(min_compile_seconds: float = 0.5) -> Callable[..., None]:
  """From now on, call ``release_freed_heap`` after every compile that took ``min_compile_seconds`` or longer.

  It runs between compiling and the first run, so the compiler's freed memory and the program's buffers are never
  held at once. Small compiles (eager ops) free little and are skipped. Calling again replaces the threshold.
  Returns the listener (``jax.monitoring.unregister_event_duration_listener`` removes it).
  """
  global _listener
  if _listener is not None:
    jax.monitoring.unregister_event_duration_listener(_listener)

  def listener(event: str, duration_secs: float, **kwargs) -> None:
    del kwargs
    if event == COMPILE_EVENT and duration_secs >= min_compile_seconds:
      release_freed_heap()

  _listener = listener
  jax.monitoring.register_event_duration_secs_listener(listener)
  return listener
