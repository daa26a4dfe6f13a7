"""The one training loop: train, log, evaluate, checkpoint, resume, stop cleanly on SIGTERM.

The loop itself only steps; what happens after a step is its hooks' (vljax/train/hooks.py), in
the order `train_and_evaluate` lists them.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
from absl import logging
from tqdm import tqdm

from vljax import checkpoint_io
from vljax import metrics as metrics_lib
from vljax.data.sources import skips as skips_lib
from vljax.inference.runner import ModelRunner
from vljax.parallel.mesh import batch_shards, check_batch_divisible, make_mesh
from vljax.parallel.sharding import batch_sharding
from vljax.train import checkpoint as ckpt_lib
from vljax.train import ema, hooks, init_from, preemption, setup, state as state_lib, step as step_lib, step_flops
from vljax.train import teacher as teacher_lib


@dataclasses.dataclass
class _Start:
  """Where a run starts: its state, data iterator and checkpoints, fresh or resumed."""
  state: Any
  shardings: Any
  data_iter: Any
  checkpointer: ckpt_lib.Checkpointer
  skipped: skips_lib.SkipTotals  # bad samples the data skipped (data/skipped), kept across resume
  meta: dict  # what every checkpoint records about the model and the state's layout


def _global_batch(local: dict, mesh) -> dict:
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v) for k, v in local.items()}


def _resume_or_start(cfg, workdir: str, parts: setup.RunParts, mesh) -> _Start:
  """The latest checkpoint in `workdir` restored, else a fresh state (with its init_from params)."""
  inputs = state_lib.dummy_inputs(cfg, batch_shards(mesh))
  abstract, shardings = state_lib.plan_train_state(parts.model, parts.tx, cfg, mesh, inputs)
  expected_shapes = checkpoint_io.param_shapes(abstract.params)
  layout = ckpt_lib.state_layout(abstract, cfg.frozen, cfg.optimizer.to_dict())
  data_iter = setup.make_data_iterator(cfg, parts.tokenizer, jax.process_index(), jax.process_count())
  checkpointer = ckpt_lib.Checkpointer(workdir, every=cfg.checkpoint.every, keep=cfg.checkpoint.keep,
                                       async_save=cfg.checkpoint.async_save)
  latest = checkpointer.latest_step()
  skipped = skips_lib.SkipTotals()
  if latest is not None:
    state, data_state, saved_meta = checkpointer.restore(latest, abstract, expected_shapes, layout)
    data_iter.set_state(data_state)
    skipped = skips_lib.SkipTotals(saved_meta.get("data_skipped"))
    logging.warning("resumed from %s at step %d", checkpointer.directory, latest)
  else:  # a resume restores into `abstract`: the init is neither compiled nor run
    state = state_lib.init_train_state(parts.model, parts.tx, cfg, inputs, shardings)
    if init_from.sources(cfg.init_from):
      state = init_from.replace_params(state, cfg.init_from, expected_shapes)
  meta = {"model_name": cfg.model.name, "param_shapes": expected_shapes, **layout}
  return _Start(state, shardings, data_iter, checkpointer, skipped, meta)


def _train_loop(state, next_batch, train_step, step_hooks: list[hooks.Hook], total: int) -> Any:
  """Steps from `state` to `total`, running the hooks after each step; stops early when they agree
  to. Returns the last state."""
  for step in range(int(state.step) + 1, total + 1):
    state, step_metrics = train_step(state, next_batch())
    ctx = hooks.StepContext(step, total, state, step_metrics)
    for hook in step_hooks:
      hook.after_step(ctx)
    if ctx.stopping:
      logging.warning("stopped at step %d after SIGTERM; rerun the same command to resume", step)
      break
  return state


def train_and_evaluate(cfg, workdir: str) -> dict[str, float]:
  """Runs `cfg` in `workdir` (resuming from its latest checkpoint); returns the final metrics."""
  parts = setup.build(cfg)
  mesh = make_mesh(cfg.mesh)
  check_batch_divisible(cfg.batch_size, mesh)
  check_batch_divisible(cfg.batch_size // cfg.grad_accum_steps, mesh, "batch_size / grad_accum_steps")
  process = jax.process_index()

  with jax.set_mesh(mesh):
    # The teacher's params, read again on every start (a resume too): never in the checkpoint.
    teacher = parts.teacher and teacher_lib.place(parts.teacher, mesh, state_lib.dummy_inputs(cfg, batch_shards(mesh)))
    run = _resume_or_start(cfg, workdir, parts, mesh)
    if process == 0:  # only now: a config that fails above leaves the workdir as it was
      metrics_lib.write_text(workdir, "config.json", cfg.to_json_best_effort(indent=2))
    writer = metrics_lib.MetricWriter(workdir)
    train_step = step_lib.make_train_step(parts.model, parts.tx, cfg, parts.schedule, mesh, run.shardings, teacher)
    runner = ModelRunner(parts.model, mesh, cfg.eval_batch_size, parts.tokenizer)
    flops_per_step = step_flops.flops_per_step(cfg, parts.model_cfg, run.meta["param_shapes"])  # None: no MFU
    start, total = int(run.state.step), cfg.total_steps
    stop = preemption.StopAgreement()
    bar = tqdm(total=total, initial=start, disable=not cfg.progress_bar or process != 0, dynamic_ncols=True,
               desc="train")
    clock = hooks.ThroughputClock()
    evaluate = hooks.Evaluate(parts.evaluators, cfg.evals, runner, writer,
                              weights=lambda state: ema.evaluated(cfg, state.params, state.ema_params))
    step_hooks = [
        stop,  # first: the others act on ctx.stopping
        hooks.LogMetrics(writer, bar, clock, run.skipped, every=cfg.log_every, global_batch=cfg.batch_size,
                         flops_per_step=flops_per_step, peak_flops=cfg.peak_flops or metrics_lib.device_peak_flops()),
        hooks.SaveCheckpoint(run.checkpointer, run.data_iter, run.meta, run.skipped),
        evaluate,
        hooks.RestartClock(clock, cfg.log_every),
    ]
    next_batch = lambda: _global_batch(run.skipped.pop(next(run.data_iter)), mesh)  # noqa: E731
    try:
      state = _train_loop(run.state, next_batch, train_step, step_hooks, total)
      if start >= total:  # resumed a finished run: report its evaluations again
        evaluate.run(total, state, force=True)
    finally:
      bar.close()
      stop.close()
      run.checkpointer.close()
      writer.close()
      run.data_iter.close()  # stops grain's threads and worker processes now, not at interpreter exit
  return evaluate.results


def write_final_metrics(workdir: str, final: dict) -> str | None:
  """workdir/final_metrics.json (process 0); its path, or None when there is nothing to write."""
  if jax.process_index() != 0 or not final:
    return None
  return metrics_lib.write_text(workdir, "final_metrics.json", json.dumps(final, indent=2, sort_keys=True))
