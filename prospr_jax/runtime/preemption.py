"""SIGTERM (a preempted TPU/GPU VM, SLURM at its time limit) stops a run as Ctrl-C does, with a checkpoint of its step.

prune.py, train.py and sweep.py call ``handle_sigterm()``: SIGTERM then raises ``Preempted``. While a
single-process run trains, the loop holds the signal (``held``): the step in flight finishes, the loop saves a
checkpoint of it and raises ``Preempted``. The run ends with one ``error:`` line and exit code 143 (128 + SIGTERM,
what a shell reports for a process SIGTERM ended); rerunning the same command resumes bit for bit. A multi-process
run stops at once (each process gets its own SIGTERM, at a different step) and resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

import jax

EXIT_CODE = 128 + signal.SIGTERM
log = logging.getLogger(__name__)
_holding = 0  # nesting depth of ``held`` blocks
_received = False


class Preempted(KeyboardInterrupt):
  """SIGTERM ended the run; every Ctrl-C path (saves finish first, a sweep names its cell) treats it alike."""


def _on_sigterm(signum: int, frame: object) -> None:
  del signum, frame
  global _received
  if not _holding:
    raise Preempted('SIGTERM')
  if not _received:
    log.warning('SIGTERM: saving a checkpoint after the step in flight, then stopping')
  _received = True


def handle_sigterm() -> None:
  """From now on SIGTERM raises ``Preempted`` (in the main thread), or is held by a training loop."""
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _on_sigterm)


def requested() -> bool:
  """Whether a SIGTERM arrived during the ``held`` block."""
  return _received


@contextlib.contextmanager
def held() -> Iterator[None]:
  """Inside the block SIGTERM is only recorded (``requested``), so the caller can save first; if one arrived and
  the block did not raise ``Preempted`` itself, leaving it does. Multi-process runs hold nothing."""
  global _holding, _received
  if jax.process_count() > 1:
    yield
    return
  _holding += 1
  try:
    yield
  finally:
    _holding -= 1
    arrived, _received = _received, _received and bool(_holding)
  if arrived and not _holding:
    raise Preempted('SIGTERM')
