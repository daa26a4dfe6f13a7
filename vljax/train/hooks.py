"""What the training loop does after each step, as hooks: objects with `after_step(ctx)`.

The loop runs them in a fixed order (vljax/train/trainer.py): agree whether to stop, log, save,
evaluate, restart the throughput clock. The step's checkpoint comes before its evaluations, so an
evaluation that fails does not cost the steps before it.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Protocol

import jax
import numpy as np
from absl import logging

from vljax import metrics as metrics_lib
from vljax.parallel.distributed import sum_over_processes


@dataclasses.dataclass
class StepContext:
  """One finished train step as the hooks see it; the stop agreement sets `stopping` first."""
  step: int
  total: int
  state: Any
  metrics: Any  # this step's train metrics, on device
  stopping: bool = False

  @property
  def last(self) -> bool:
    return self.step == self.total


class Hook(Protocol):
  def after_step(self, ctx: StepContext) -> None: ...


def due(step: int, every: int, last: int) -> bool:
  """At step `last`, and at every multiple of `every` (0: never)."""
  return step == last or (every > 0 and step % every == 0)


class ThroughputClock:
  """Steps and seconds since the last restart. The first step compiles: timing starts at its end."""

  def __init__(self):
    self.start: float | None = None
    self.steps = 0

  def tick(self, step_metrics) -> None:
    if self.start is None:
      jax.block_until_ready(step_metrics)
      self.restart()
    else:
      self.steps += 1

  def restart(self) -> None:
    self.start, self.steps = time.perf_counter(), 0

  def seconds(self) -> float:
    return time.perf_counter() - self.start


class LogMetrics:
  """Every `every` steps, at the last and when stopping: the step's train/ metrics with throughput
  and MFU since the clock's restart, and data/skipped, to metrics.jsonl, tensorboard and the bar."""

  def __init__(self, writer: metrics_lib.MetricWriter, bar, clock: ThroughputClock, skipped, *, every: int,
               global_batch: int, flops_per_step: float | None, peak_flops: float | None):
    self.writer, self.bar, self.clock, self.skipped = writer, bar, clock, skipped
    self.every, self.global_batch = every, global_batch
    self.flops_per_step, self.peak_flops = flops_per_step, peak_flops

  def after_step(self, ctx: StepContext) -> None:
    self.bar.update(1)
    self.clock.tick(ctx.metrics)
    if not (due(ctx.step, self.every, ctx.total) or ctx.stopping):
      return
    row = self._row(ctx)
    self.writer.write(ctx.step, row)
    self.bar.set_postfix(loss=f"{row['train/loss']:.3f}", ex_s=f"{row.get('train/examples_per_sec', 0):.0f}")

  def _row(self, ctx: StepContext) -> dict:
    row = {f"train/{k}": v for k, v in jax.device_get(ctx.metrics).items()}
    if self.clock.steps:
      row.update({f"train/{k}": v for k, v in metrics_lib.throughput_metrics(
          steps=self.clock.steps, seconds=self.clock.seconds(), global_batch=self.global_batch,
          flops_per_step=self.flops_per_step, num_devices=jax.device_count(), peak_flops=self.peak_flops).items()})
    if not np.isfinite(row["train/loss"]):
      raise FloatingPointError(f"train/loss is {row['train/loss']} at step {ctx.step}; lower optimizer.lr "
                               "or check the data")
    if self.skipped.seen:
      totals = self.skipped.totals(sum_over_processes)
      row["data/skipped"] = sum(totals.values())
      if (message := self.skipped.warning(ctx.step, totals, last=ctx.last)) and jax.process_index() == 0:
        logging.warning(message)
    return row


class SaveCheckpoint:
  """Every checkpoint.every steps (the Checkpointer's own count), at the last and when stopping: the
  state, the data iterator's position and the run's metadata with the skipped-sample totals."""

  def __init__(self, checkpointer, data_iter, meta: dict, skipped):
    self.checkpointer, self.data_iter, self.meta, self.skipped = checkpointer, data_iter, meta, skipped

  def after_step(self, ctx: StepContext) -> None:
    # A function: the totals are a collective, paid only when a save is due.
    meta = lambda: dict(self.meta, data_skipped=self.skipped.totals(sum_over_processes))  # noqa: E731
    self.checkpointer.save(ctx.step, ctx.state, self.data_iter.get_state, meta, force=ctx.last or ctx.stopping)


class Evaluate:
  """Each evaluator every its `every` steps, all of them at the last step; `results` keeps the
  latest value of every eval/ metric (the run's final metrics). `weights(state)` gives the params to
  score, {metric prefix: params} (vljax.train.ema.evaluated: the raw weights, the EMA, or both)."""

  def __init__(self, evaluators: dict, settings, runner, writer: metrics_lib.MetricWriter,
               weights: Callable[[Any], dict[str, Any]] = lambda state: {"": state.params}):
    self.evaluators, self.settings, self.runner, self.writer = evaluators, settings, runner, writer
    self.weights = weights
    self.results: dict[str, float] = {}

  def _every(self, name: str) -> int:
    return int(self.settings[name].get("every", 0))

  def after_step(self, ctx: StepContext) -> None:
    if ctx.last or any(due(ctx.step, self._every(name), ctx.total) for name in self.settings):
      self.run(ctx.step, ctx.state, force=ctx.last)

  def run(self, step: int, state, force: bool = False) -> dict[str, float]:
    """The evaluators due at `step` (all when `force`) on `state`'s weights, written at `step`."""
    out = {}
    weights = self.weights(state)
    for name, evaluator in self.evaluators.items():
      if force or due(step, self._every(name), -1):
        for prefix, params in weights.items():
          start = time.perf_counter()
          out.update({f"eval/{name}/{prefix}{k}": v for k, v in evaluator(self.runner, params).items()})
          logging.info("eval %s%s at step %d took %.1fs", name, f" ({prefix.rstrip('_')})" if prefix else "",
                       step, time.perf_counter() - start)
    if out:
      self.writer.write(step, out)
    self.results.update(out)
    return out


class RestartClock:
  """After a log step's saves and evaluations: they are not step time for the next log row."""

  def __init__(self, clock: ThroughputClock, every: int):
    self.clock, self.every = clock, every

  def after_step(self, ctx: StepContext) -> None:
    if due(ctx.step, self.every, ctx.total):
      self.clock.restart()
