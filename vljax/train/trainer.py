"""The one training loop: train, log, evaluate, checkpoint, resume, stop cleanly on SIGTERM."""

from __future__ import annotations

import json
import signal
import time

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from vljax import checkpoint_io
from vljax import metrics as metrics_lib
from vljax.data.sources import skips as skips_lib
from vljax.inference.runner import ModelRunner
from vljax.parallel.mesh import batch_shards, check_batch_divisible, make_mesh
from vljax.parallel.sharding import batch_sharding
from vljax.train import checkpoint as ckpt_lib
from vljax.train import init_from, setup, state as state_lib, step as step_lib, step_flops


class _StopAgreement:
  """Preemption: after SIGTERM reaches any process, every process stops at the same step, saves it
  and returns. Hosts are signalled one at a time; a host acting on its own flag alone would enter
  the next step's collectives without the others and hang.

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
      stop = bool(_sum_over_processes(np.array([self.requested], np.int32))[0])
    else:
      stop = self.requested
    if stop and not self.requested:
      logging.warning("preemption notice (SIGTERM on some process): every process stops at step %d", step)
    self.requested = stop
    return stop

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _global_batch(local: dict, mesh) -> dict:
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v) for k, v in local.items()}


def _sum_over_processes(local: np.ndarray) -> np.ndarray:
  if jax.process_count() == 1:
    return local
  from jax.experimental import multihost_utils  # lazy: multi-host only
  return np.asarray(multihost_utils.process_allgather(local)).sum(axis=0)


def _due(step: int, every: int, last: int) -> bool:
  return step == last or (every > 0 and step % every == 0)


def train_and_evaluate(cfg, workdir: str) -> dict[str, float]:
  """Runs `cfg` in `workdir` (resuming from its latest checkpoint); returns the final metrics."""
  parts = setup.build(cfg)
  mesh = make_mesh(cfg.mesh)
  check_batch_divisible(cfg.batch_size, mesh)
  check_batch_divisible(cfg.batch_size // cfg.grad_accum_steps, mesh, "batch_size / grad_accum_steps")
  process = jax.process_index()

  with jax.set_mesh(mesh):
    inputs = state_lib.dummy_inputs(cfg, batch_shards(mesh))
    state, shardings = state_lib.create_train_state(parts.model, parts.tx, cfg, mesh, inputs)
    expected_shapes = checkpoint_io.param_shapes(state.params)
    layout = ckpt_lib.state_layout(state, cfg.frozen, cfg.optimizer.to_dict())
    data_iter = setup.make_data_iterator(cfg, parts.tokenizer, process, jax.process_count())
    checkpointer = ckpt_lib.Checkpointer(workdir, every=cfg.checkpoint.every, keep=cfg.checkpoint.keep,
                                         async_save=cfg.checkpoint.async_save)
    latest = checkpointer.latest_step()
    skipped = skips_lib.SkipTotals()  # bad samples the data skipped (data/skipped), kept across resume
    if latest is not None:
      state, data_state, saved_meta = checkpointer.restore(latest, state_lib.abstract_state(shardings, state),
                                                           expected_shapes, layout)
      data_iter.set_state(data_state)
      skipped = skips_lib.SkipTotals(saved_meta.get("data_skipped"))
      logging.warning("resumed from %s at step %d", checkpointer.directory, latest)
    elif init_from.sources(cfg.init_from):
      state = init_from.replace_params(state, cfg.init_from, expected_shapes)

    if process == 0:  # only now: a config that fails above leaves the workdir as it was
      metrics_lib.write_text(workdir, "config.json", cfg.to_json_best_effort(indent=2))
    writer = metrics_lib.MetricWriter(workdir)
    train_step = step_lib.make_train_step(parts.model, parts.tx, cfg, parts.schedule, mesh, shardings)
    runner = ModelRunner(parts.model, mesh, cfg.eval_batch_size, parts.tokenizer)
    meta = {"model_name": cfg.model.name, "param_shapes": expected_shapes, **layout}
    flops_per_step = step_flops.flops_per_step(cfg, parts.model_cfg, expected_shapes)  # None: no MFU
    peak = cfg.peak_flops or metrics_lib.device_peak_flops()

    def evaluate(step: int, force: bool = False) -> dict[str, float]:
      out = {}
      for name, evaluator in parts.evaluators.items():
        if force or _due(step, int(cfg.evals[name].get("every", 0)), -1):
          t = time.perf_counter()
          out.update({f"eval/{name}/{k}": v for k, v in evaluator(runner, state.params).items()})
          logging.info("eval %s at step %d took %.1fs", name, step, time.perf_counter() - t)
      if out:
        writer.write(step, out)
      return out

    start = int(state.step)
    total = cfg.total_steps
    stop = _StopAgreement()
    bar = tqdm(total=total, initial=start, disable=not cfg.progress_bar or process != 0, dynamic_ncols=True,
               desc="train")
    final: dict[str, float] = {}
    timer_steps, timer_start = 0, None
    try:
      for step in range(start + 1, total + 1):
        state, step_metrics = train_step(state, _global_batch(skipped.pop(next(data_iter)), mesh))
        stopping = stop.at(step)
        bar.update(1)
        if timer_start is None:  # the first step compiles: time from its end
          jax.block_until_ready(step_metrics)
          timer_start, timer_steps = time.perf_counter(), 0
        else:
          timer_steps += 1
        if _due(step, cfg.log_every, total) or stopping:
          host = jax.device_get(step_metrics)
          row = {f"train/{k}": v for k, v in host.items()}
          if timer_steps:
            row.update({f"train/{k}": v for k, v in metrics_lib.throughput_metrics(
                steps=timer_steps, seconds=time.perf_counter() - timer_start, global_batch=cfg.batch_size,
                flops_per_step=flops_per_step, num_devices=jax.device_count(), peak_flops=peak).items()})
          if not np.isfinite(row["train/loss"]):
            raise FloatingPointError(f"train/loss is {row['train/loss']} at step {step}; lower optimizer.lr "
                                     "or check the data")
          if skipped.seen:
            totals = skipped.totals(_sum_over_processes)
            row["data/skipped"] = sum(totals.values())
            if (message := skipped.warning(step, totals, last=step == total)) and process == 0:
              logging.warning(message)
          writer.write(step, row)
          bar.set_postfix(loss=f"{row['train/loss']:.3f}",
                          ex_s=f"{row.get('train/examples_per_sec', 0):.0f}")
        # The step's checkpoint first: an evaluation that fails must not cost the steps before it.
        save_meta = lambda: dict(meta, data_skipped=skipped.totals(_sum_over_processes))  # noqa: E731
        checkpointer.save(step, state, data_iter.get_state, save_meta, force=step == total or stopping)
        if step == total or any(_due(step, int(s.get("every", 0)), total) for s in cfg.evals.values()):
          final.update(evaluate(step, force=step == total))
        if _due(step, cfg.log_every, total):
          timer_start, timer_steps = time.perf_counter(), 0  # evals and saves are not step time
        if stopping:
          logging.warning("stopped at step %d after SIGTERM; rerun the same command to resume", step)
          break
      else:
        if start >= total:  # resumed a finished run: report its evaluations again
          final.update(evaluate(total, force=True))
    finally:
      bar.close()
      stop.restore()
      checkpointer.close()
      writer.close()
      data_iter.close()  # stops grain's threads and worker processes now, not at interpreter exit
  return final


def write_final_metrics(workdir: str, final: dict) -> str | None:
  """workdir/final_metrics.json (process 0); its path, or None when there is nothing to write."""
  if jax.process_index() != 0 or not final:
    return None
  return metrics_lib.write_text(workdir, "final_metrics.json", json.dumps(final, indent=2, sort_keys=True))
