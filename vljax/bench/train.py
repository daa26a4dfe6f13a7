"""Train-step benchmark: compile the jitted step, then time it on synthetic batches already on device.

  python -m vljax.bench --config configs/clip_vit_b16.py [--config.KEY=VALUE ...] [--steps 20]

No data pipeline: the batch is generated once, sharded like the trainer's, and reused, so the
numbers are the step alone. Two FLOP counts: the model's (analytic matmuls + attention: the
forward and the backward that config.frozen leaves, part by part; vljax.models.flops), which MFU
divides by the peak, and XLA's (cost analysis of the compiled step: everything it executes, remat
recomputation and elementwise ops included), which HFU divides by the peak. XLA's cost analysis
counts one iteration of a loop, so a step that loops over matmuls (scanned layers, gradient
accumulation, a ring loss) is counted from the lowering of its loop-free equivalent instead.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from vljax import allocator, checkpoint_io, evals
from vljax import metrics as metrics_lib
from vljax.bench import op_profile
from vljax.bench.decode import machine_name
from vljax.data import device_resize, images, pipeline
from vljax.parallel.mesh import batch_shards, check_batch_divisible, make_mesh
from vljax.parallel.sharding import LOGICAL_RULES, MESH_AXES, batch_sharding, bytes_per_device
from vljax.train import setup, state as state_lib, step as step_lib, step_flops, teacher as teacher_lib
from vljax.train.optim import split_frozen


def synthetic_batch(cfg: ml_collections.ConfigDict, tokenizer, mesh, seed: int = 0) -> dict[str, jax.Array]:
  """A global batch of cfg.data.format generated on device, sharded over the batch mesh axes.

  Images uniform in [-1, 1] (the pipeline's range). Text rows are `[BOS] ids [EOS] [PAD]...` with
  lengths between half and all of max_len, content ids random in [1, vocab) minus the special ids
  ("vlm": one "<image>" per chunk), so last-token pooling and padding masks see what real
  batches give them. loss_mask (formats that have one) covers the second half of each row.
  data.resize="device": uint8 canvases with boxes from image_size / 2 to the whole canvas, so the
  step's time includes resizing them.
  """
  fmt, b, size, length = cfg.data.format, cfg.batch_size, cfg.data.image_size, cfg.data.max_len
  on_device = pipeline.resizes_on_device(cfg.data)
  ndims = pipeline.batch_ndims(fmt, on_device)
  canvas = device_resize.canvas_size(cfg.data)
  chunks = int(cfg.data.chunks) if fmt == "vlm" else 0
  if length < chunks + 2:
    raise ValueError(f"data.max_len={length} cannot hold BOS, EOS and {chunks} image token(s)")
  unknown = sorted(set(ndims) - {"image", "text", "loss_mask", images.BOX_KEY})
  if unknown:
    raise ValueError(f"vljax.bench makes no synthetic {unknown} for data.format={fmt!r}; valid formats: those "
                     f"with image, text and loss_mask only")
  image_shape = (b, chunks, size, size, 3) if ndims.get("image") == 5 else (b, size, size, 3)
  specials = {tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, *tokenizer.special_ids.values()}
  filler = min(set(range(1, len(specials) + 2)) - specials)  # an ordinary id to stand in for specials
  special_ids = jnp.asarray(sorted(specials), jnp.int32)

  def make(rng):
    k_image, k_ids, k_len = jax.random.split(rng, 3)
    image = jax.random.uniform(k_image, image_shape, jnp.float32, -1.0, 1.0)
    if on_device:
      image = jax.random.randint(k_image, (b, canvas, canvas, 3), 0, 256, jnp.int32).astype(jnp.uint8)
      ends = jax.random.uniform(jax.random.fold_in(k_len, 1), (b, 2), jnp.float32, max(1, size // 2), canvas)
      boxes = jnp.concatenate([jnp.zeros((b, 2), jnp.float32), ends], axis=1)
    ids = jax.random.randint(k_ids, (b, length), 1, tokenizer.vocab_size, jnp.int32)
    ids = jnp.where(jnp.isin(ids, special_ids), filler, ids)
    lengths = jax.random.randint(k_len, (b, 1), max(chunks + 2, length // 2), length + 1)
    pos = jnp.arange(length)[None]
    ids = jnp.where(pos == 0, tokenizer.bos_id, ids)
    for k in range(chunks):  # chunk k's image token opens the k-th equal share of the row
      ids = jnp.where(pos == 1 + k * ((lengths - 2) // chunks), tokenizer.image_id, ids)
    ids = jnp.where(pos == lengths - 1, tokenizer.eos_id, ids)
    ids = jnp.where(pos >= lengths, tokenizer.pad_id, ids)
    out = {"text": ids}
    if "image" in ndims:
      out["image"] = image
    if on_device:
      out[images.BOX_KEY] = boxes
    if "loss_mask" in ndims:
      out["loss_mask"] = (pos >= lengths // 2) & (pos < lengths)
    return out

  shardings = {k: batch_sharding(mesh, n) for k, n in ndims.items()}
  return jax.jit(make, out_shardings=shardings)(jax.random.PRNGKey(seed))


def _cost_flops(stage) -> float | None:
  """"flops" of a Lowered / Compiled stage's cost analysis; None where the backend gives none."""
  cost = stage.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def _subjaxprs(eqn):
  for value in eqn.params.values():
    for v in value if isinstance(value, (tuple, list)) else (value,):
      if hasattr(v, "eqns"):
        yield v
      elif hasattr(getattr(v, "jaxpr", None), "eqns"):  # ClosedJaxpr
        yield v.jaxpr


def _has_matmul(jaxpr) -> bool:
  return any(e.primitive.name in ("dot_general", "conv_general_dilated") or any(map(_has_matmul, _subjaxprs(e)))
             for e in jaxpr.eqns)


def has_matmul_loops(jaxpr) -> bool:
  """Whether a scan or while loop of the jaxpr does matmuls (nn.scan layers, gradient
  accumulation, the ring of a shard_map loss). XLA's cost analysis counts one iteration of a
  loop; loops without matmuls (e.g. threefry's rounds on CPU) are too cheap to matter."""
  for e in jaxpr.eqns:
    subs = list(_subjaxprs(e))
    if e.primitive.name in ("scan", "while") and any(map(_has_matmul, subs)):
      return True
    if any(map(has_matmul_loops, subs)):
      return True
  return False


def _unscanned(tree: Any) -> Any:
  """A model config with every `scan` switched off: the same layers unrolled."""
  if isinstance(tree, dict):
    return {k: False if k == "scan" else _unscanned(v) for k, v in tree.items()}
  return tree


def loop_free_xla_flops(cfg: ml_collections.ConfigDict, mesh, batch: dict) -> float | None:
  """Global FLOPs of one step from XLA's cost analysis of its loop-free equivalent: layers
  unrolled (scan=False), the batch in one pass (grad_accum_steps=1), the contrastive loss by
  all-gather (loss_impl="gather"; the ring does the same matmuls). Same arithmetic, remat
  included. Lowered only: abstract state, no compile, no memory. None if matmul loops remain."""
  flat = cfg.to_dict()
  flat.update(model=_unscanned(flat["model"]), grad_accum_steps=1, loss_impl="gather")
  cfg = ml_collections.ConfigDict(flat)
  parts = setup.build(cfg)
  inputs = state_lib.dummy_inputs(cfg, batch_shards(mesh))
  abstract, shardings = state_lib.plan_train_state(parts.model, parts.tx, cfg, mesh, inputs)
  step = step_lib.make_train_step(parts.model, parts.tx, cfg, parts.schedule, mesh, shardings,
                                  _teacher(parts, mesh, inputs))
  traced = step.trace(abstract, batch)
  return None if has_matmul_loops(traced.jaxpr.jaxpr) else _cost_flops(traced.lower())


def xla_step_flops(compiled, matmul_loops: bool, cfg: ml_collections.ConfigDict, mesh,
                   batch: dict) -> tuple[float | None, str]:
  """Global FLOPs of one step as XLA counts them (everything executed: remat recomputation,
  elementwise ops, replicated work on every device), and where the count comes from."""
  per_device = _cost_flops(compiled)
  if per_device is None:
    return None, "n/a: the backend gives no cost analysis"
  if not matmul_loops:
    return per_device * mesh.devices.size, "cost analysis of the compiled step"
  mode = cfg.get("grad_accum_mode", "mean")
  if cfg.grad_accum_steps > 1 and mode != "mean":
    return None, f"n/a: grad_accum_mode={mode!r} re-runs the forward in its loop; no loop-free equivalent"
  total = loop_free_xla_flops(cfg, mesh, batch)
  if total is None:
    return None, "n/a: the step loops over matmuls, and cost analysis counts one iteration"
  return total, "cost analysis of the loop-free lowering: the compiled step's loops count once"


def memory_stats(compiled) -> dict[str, int | None]:
  """Per-device bytes of the compiled step. The donated state is both an argument and an
  output sharing one buffer (alias), so the total counts it once: argument + output - alias +
  temp. None where the backend gives no memory analysis."""
  keys = ("temp", "argument", "output", "alias")
  mem = compiled.memory_analysis()
  if mem is None:
    return {f"memory_{k}_bytes": None for k in (*keys, "per_device")}
  out = {f"memory_{k}_bytes": int(getattr(mem, f"{k}_size_in_bytes", 0) or 0) for k in keys}
  out["memory_per_device_bytes"] = (out["memory_argument_bytes"] + out["memory_output_bytes"]
                                    - out["memory_alias_bytes"] + out["memory_temp_bytes"])
  return out


def activation_bytes(model, cfg, state, batch, teacher=None) -> int | None:
  """Bytes of what the forward pass keeps for the backward (autodiff residuals, params excluded) for
  one micro-batch of the whole global batch: the floor under the compiled step's temporary memory,
  per device once divided over the batch shards. None where JAX cannot list residuals."""
  try:
    from jax._src.ad_checkpoint import saved_residuals  # not exported; print_saved_residuals prints it
  except ImportError:
    return None
  loss_fn = step_lib.make_loss_fn(model, cfg, None if teacher is None else teacher.module)
  teacher_params = None if teacher is None else teacher.params
  trainable, frozen = split_frozen(state.params, list(cfg.frozen))
  micro = jax.tree.map(lambda x: x[:x.shape[0] // int(cfg.grad_accum_steps)], batch)

  def loss(params):
    with nn.logical_axis_rules(LOGICAL_RULES):
      return loss_fn(params, jax.lax.stop_gradient(frozen), micro, state.rng, state.ema_params,
                     state.objective_state, teacher_params)[0]

  residuals = saved_residuals(loss, trainable)
  return sum(int(np.prod(aval.shape)) * aval.dtype.itemsize for aval, source in residuals
             if not source.startswith("from the argument"))


def _max_device_bytes(tree) -> int:
  """Bytes on the fullest device (replicated leaves count in full on every device)."""
  return max(bytes_per_device(tree).values(), default=0)


def run(cfg: ml_collections.ConfigDict, steps: int = 20, warmup: int = 3, devices=None,
        profile_steps: int = 0) -> dict[str, Any]:
  """Compiles and times cfg's train step on `devices` (default: all); the result is JSON-able.

  Keys: machine, malloc, device_kind, num_devices, cpu_cores, mesh, model, batch_size, steps, warmup,
  compile_s, step_time_median_s, step_time_p90_s, examples_per_sec, model_tflops_per_step,
  model_tflops_per_sec_per_device, xla_tflops_per_step, xla_flops_source, peak_tflops, mfu, hfu,
  memory_{per_device,temp,argument,output,alias}_bytes, params_bytes_per_device,
  opt_state_bytes_per_device, model_flops_missing. peak_tflops, mfu and hfu are None where the
  device has no known peak (CPU) and config.peak_flops is unset; model_tflops_* and mfu where the
  model declares no FLOP count (model_flops_missing says why); xla_tflops_per_step and hfu where XLA
  gives no count; memory_* where the backend has no memory analysis. With profile_steps > 0, also
  op_profile: that many more steps traced, their time by op (vljax/bench/op_profile.py).
  """
  if steps < 1 or warmup < 0 or profile_steps < 0:
    raise ValueError(f"steps={steps} must be >= 1, warmup={warmup} >= 0 and profile_steps={profile_steps} >= 0")
  bench = PreparedStep(cfg, devices)
  cfg, parts, mesh = bench.cfg, bench.parts, bench.mesh
  num_devices, device = int(mesh.devices.size), mesh.devices.flat[0]
  with jax.set_mesh(mesh):
    bench.time_steps(warmup)
    times = bench.time_steps(steps)
    xla_total, xla_source = xla_step_flops(bench.compiled, bench.matmul_loops, cfg, mesh, bench.batch)
    profile = None
    if profile_steps:
      profile, bench.state = op_profile.profile_step(bench.compiled, bench.state, bench.batch, profile_steps)
    activations = activation_bytes(parts.model, cfg, bench.state, bench.batch, bench.teacher)

  median, p90 = float(np.median(times)), float(np.percentile(times, 90))
  model_flops, no_count = step_flops.train_step_flops(cfg, parts.model_cfg, checkpoint_io.param_shapes(bench.state.params))
  peak = cfg.peak_flops or metrics_lib.device_peak_flops(device)
  tput = metrics_lib.throughput_metrics(steps=1, seconds=median, global_batch=cfg.batch_size,
                                        flops_per_step=model_flops, num_devices=num_devices, peak_flops=peak)
  return {
      "machine": machine_name(), "malloc": allocator.describe(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "device_kind": device.device_kind,
      "num_devices": num_devices, "cpu_cores": os.cpu_count(),
      "mesh": dict(zip(MESH_AXES, (int(s) for s in mesh.devices.shape))),
      "model": cfg.model.name, "batch_size": cfg.batch_size, "steps": steps, "warmup": warmup,
      "compile_s": bench.compile_s, "step_time_median_s": median, "step_time_p90_s": p90,
      "examples_per_sec": tput["examples_per_sec"],
      "model_tflops_per_step": model_flops / 1e12 if model_flops else None, "model_flops_missing": no_count or None,
      "model_tflops_per_sec_per_device": tput.get("model_tflops_per_sec_per_device"),
      "xla_tflops_per_step": xla_total / 1e12 if xla_total else None, "xla_flops_source": xla_source,
      "peak_tflops": peak / 1e12 if peak else None, "mfu": tput.get("mfu"),
      "hfu": xla_total / num_devices / median / peak if xla_total and peak else None,
      **memory_stats(bench.compiled),
      "params_bytes_per_device": bench.params_bytes, "opt_state_bytes_per_device": bench.opt_bytes,
      "activation_bytes_per_device": activations // batch_shards(mesh) if activations is not None else None,
      **({"op_profile": profile} if profile else {}),
  }


def _bytes(n: int | None) -> str:
  if n is None:
    return "n/a"
  return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def format_table(r: dict[str, Any]) -> str:
  """The result as a markdown table (metric | value)."""
  no_peak = "n/a (no known peak; set --config.peak_flops)"
  mesh = " x ".join(f"{a}={n}" for a, n in r["mesh"].items())
  xla = r["xla_tflops_per_step"]
  model, no_count = r["model_tflops_per_step"], f"n/a ({r['model_flops_missing']})"
  memory = r["memory_per_device_bytes"]
  rows = [
      ("machine", r["machine"]),
      ("malloc (CPU step times depend on it)", r["malloc"]),
      ("XLA_FLAGS (CPU: vljax's commands add the memory-ordered schedule)",
       f"`{r['xla_flags']}`" if r.get("xla_flags") else "none"),
      ("devices used", f"{r['num_devices']} x {r['device_kind']} (mesh {mesh})"),
      ("model / global batch", f"{r['model']} / {r['batch_size']}"),
      ("compile", f"{r['compile_s']:.1f} s"),
      (f"step time, median / p90 of {r['steps']} (after {r['warmup']} warm-up)",
       f"{1e3 * r['step_time_median_s']:.1f} / {1e3 * r['step_time_p90_s']:.1f} ms"),
      ("examples/s", f"{r['examples_per_sec']:.1f}"),
      ("model TFLOPs per step (analytic: matmuls + attention; forward + the backward frozen params leave)",
       f"{r['model_tflops_per_step']:.4g}" if model else no_count),
      ("model TFLOP/s per device", f"{r['model_tflops_per_sec_per_device']:.4g}" if model else no_count),
      ("XLA TFLOPs per step (all it executes, remat included)",
       f"{xla:.4g} ({r['xla_flops_source']})" if xla else r["xla_flops_source"]),
      ("peak TFLOP/s per device (bf16 dense)", f"{r['peak_tflops']:g}" if r["peak_tflops"] else no_peak),
      ("MFU (model FLOPs / peak)", f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None
       else no_peak if model else no_count),
      ("HFU (XLA FLOPs / peak)", f"{100 * r['hfu']:.1f}%" if r["hfu"] is not None
       else no_peak if not r["peak_tflops"] else "n/a (no XLA count)"),
      ("memory per device (argument + output - aliased + temp)",
       f"{_bytes(memory)} ({_bytes(r['memory_argument_bytes'])} + {_bytes(r['memory_output_bytes'])} - "
       f"{_bytes(r['memory_alias_bytes'])} + {_bytes(r['memory_temp_bytes'])})"
       if memory is not None else "n/a (the backend gives no memory analysis)"),
      ("params + optimizer per device",
       f"{_bytes(r['params_bytes_per_device'] + r['opt_state_bytes_per_device'])} "
       f"({_bytes(r['params_bytes_per_device'])} + {_bytes(r['opt_state_bytes_per_device'])})"),
      ("activations kept for the backward per device (autodiff residuals, one micro-batch)",
       _bytes(r["activation_bytes_per_device"]) if r.get("activation_bytes_per_device") is not None else "n/a"),
  ]
  return "\n".join(["| metric | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


class PreparedStep:
  """cfg's train step compiled on a mesh, with its state and a synthetic batch on device: what `run`
  times, and what vljax.compare times arm against arm (budget match="seconds")."""

  def __init__(self, cfg: ml_collections.ConfigDict, devices=None):
    # The trainer's checks (unknown keys, model, objectives, evaluator names), without building the
    # evaluators: they render eval sets the benchmark never uses.
    for name in cfg.evals:
      evals.get_evaluator(name)
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    cfg.evals = {}
    self.cfg, self.parts = cfg, setup.build(cfg)
    self.mesh = mesh = make_mesh(cfg.mesh, devices)
    check_batch_divisible(cfg.batch_size, mesh)
    check_batch_divisible(cfg.batch_size // cfg.grad_accum_steps, mesh, "batch_size / grad_accum_steps")
    with jax.set_mesh(mesh):
      inputs = state_lib.dummy_inputs(cfg, batch_shards(mesh))
      self.state, shardings = state_lib.create_train_state(self.parts.model, self.parts.tx, cfg, mesh, inputs)
      self.params_bytes, self.opt_bytes = _max_device_bytes(self.state.params), _max_device_bytes(self.state.opt_state)
      self.teacher = _teacher(self.parts, mesh, inputs)
      train_step = step_lib.make_train_step(self.parts.model, self.parts.tx, cfg, self.parts.schedule, mesh,
                                            shardings, self.teacher)
      self.batch = synthetic_batch(cfg, self.parts.tokenizer, mesh, cfg.seed)
      start = time.perf_counter()
      traced = train_step.trace(self.state, self.batch)
      self.compiled = _StepOf(traced.lower().compile(), () if self.teacher is None else (self.teacher.params,))
      self.compile_s = time.perf_counter() - start
      self.matmul_loops = has_matmul_loops(traced.jaxpr.jaxpr)

  def time_steps(self, steps: int) -> list[float]:
    """Seconds of each of `steps` steps, each waited for: the time of one step, not of a pipelined run."""
    times = []
    with jax.set_mesh(self.mesh):
      for _ in range(steps):
        start = time.perf_counter()
        self.state, out = self.compiled(self.state, self.batch)
        jax.block_until_ready((self.state, out))
        times.append(time.perf_counter() - start)
    return times


class _StepOf:
  """A compiled train step called as (state, batch), its further arguments (a teacher's params) bound;
  cost and memory analyses read from the executable itself."""

  def __init__(self, compiled, extra: tuple):
    self.compiled, self.extra = compiled, extra

  def __call__(self, state, batch):
    return self.compiled(state, batch, *self.extra)

  def __getattr__(self, name):
    return getattr(self.compiled, name)


def _teacher(parts, mesh, inputs: dict):
  """A distillation run's teacher on the mesh (its forward passes are part of the step timed), or None."""
  return parts.teacher and teacher_lib.place(parts.teacher, mesh, inputs)
