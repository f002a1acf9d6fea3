"""Named points where a test kills the run (SIGKILL, or SIGTERM), to prove that a rerun resumes bit for bit.

``PROSPR_JAX_KILL_AT=<point>`` (or ``<point>:<step>``) kills the process the
first time it reaches that point (at that training step);
``PROSPR_JAX_KILL_SIGNAL=SIGTERM`` sends SIGTERM instead (a preemption). Unset,
a point costs one dictionary lookup. Points: ``scoring`` (scores computed,
nothing written), ``pruning_files`` (some pruning files written, not the mask),
``training`` (in the middle of an epoch), ``checkpoint_save`` (a save still in flight).
"""

from __future__ import annotations

import os
import signal

POINTS = ('scoring', 'pruning_files', 'training', 'checkpoint_save')
ENV = 'PROSPR_JAX_KILL_AT'
SIGNAL_ENV = 'PROSPR_JAX_KILL_SIGNAL'


def point(name: str, step: int | None = None) -> None:
  """Signal this process (SIGKILL, or ``PROSPR_JAX_KILL_SIGNAL``) if ``PROSPR_JAX_KILL_AT`` names this point."""
  wanted = os.environ.get(ENV)
  if wanted and wanted in (name, f'{name}:{step}'):
    os.kill(os.getpid(), signal.Signals[os.environ.get(SIGNAL_ENV, 'SIGKILL')])
