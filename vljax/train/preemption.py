"""Preemption: after SIGTERM reaches any process, every process stops at the same step, saves it
and returns."""

from __future__ import annotations

import signal

import jax
import numpy as np
from absl import logging

from vljax.parallel.distributed import sum_over_processes


class StopAgreement:
  """The loop's first hook: sets `ctx.stopping` at every step, the same on every process. Hosts are
  signalled one at a time; a host acting on its own flag alone would enter the next step's
  collectives without the others and hang.

  One process: a SIGTERM handler sets a flag. Several: JAX's preemption service (on by default with
  jax.distributed) catches SIGTERM and agrees on a step (reached_preemption_sync_point); without
  the service the processes all-reduce their flags every step.
  """

  def __init__(self):
    self.requested = False
    self._processes = jax.process_count()
    self._service = self._processes > 1 and jax.config.jax_enable_preemption_service
    self._previous = None
    if not self._service:  # the service's own handler must stay in place
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    logging.warning("SIGTERM: will checkpoint and stop after the current step")
    self.requested = True

  def at(self, step: int) -> bool:
    """Whether every process stops after `step` (call at every step, on every process)."""
    if self._service:
      from jax.experimental import multihost_utils  # lazy: multi-host only
      stop = multihost_utils.reached_preemption_sync_point(step)
    elif self._processes > 1:
      stop = bool(sum_over_processes(np.array([self.requested], np.int32))[0])
    else:
      stop = self.requested
    if stop and not self.requested:
      logging.warning("preemption notice (SIGTERM on some process): every process stops at step %d", step)
    self.requested = stop
    return stop

  def after_step(self, ctx) -> None:
    ctx.stopping = self.at(ctx.step)

  def close(self) -> None:
    """Puts back the SIGTERM handler that was there before."""
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
