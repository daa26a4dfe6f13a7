"""`python -m vljax.bench`: the train-step benchmark reports every number, analytic FLOPs that agree
with XLA's, MFU only where a peak is known, and bad input as `error: ...` with exit code 2."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import tiny_config
from vljax import allocator, xla_cpu
from vljax.bench import train as bench
from vljax.data import tokenizers
from vljax.parallel.mesh import make_mesh
from vljax.parallel.sharding import BATCH_AXES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POSITIVE = ("num_devices", "cpu_cores", "batch_size", "steps", "compile_s", "step_time_median_s", "step_time_p90_s",
            "examples_per_sec", "model_tflops_per_step", "model_tflops_per_sec_per_device", "xla_tflops_per_step",
            "memory_per_device_bytes", "memory_temp_bytes", "memory_argument_bytes", "memory_output_bytes",
            "params_bytes_per_device", "opt_state_bytes_per_device")
PEAK_DEPENDENT = ("peak_tflops", "mfu", "hfu")


@pytest.fixture(scope="module")
def mesh_run():
  cfg = tiny_config(mesh=dict(data=2, fsdp=2, tensor=2))
  return cfg, bench.run(cfg, steps=2, warmup=1)


@pytest.fixture(scope="module")
def one_device_run():
  # Gradient accumulation compiles to a while loop, whose body XLA's cost analysis counts once. The
  # image tower frozen (as LiT's): no backward pass of it in either count.
  cfg = tiny_config(mesh=dict(data=1), grad_accum_steps=2, peak_flops=1e12, frozen=("img/.*",))
  return cfg, bench.run(cfg, steps=2, warmup=1, devices=jax.devices()[:1])


@pytest.mark.parametrize("which", ["mesh_run", "one_device_run"])
def test_every_number_is_reported_and_positive(which, request):
  cfg, r = request.getfixturevalue(which)
  for key in POSITIVE:
    assert r[key] > 0, (key, r[key])
  assert r["steps"] == 2 and r["warmup"] == 1 and r["batch_size"] == 16
  assert r["memory_per_device_bytes"] >= r["memory_temp_bytes"]
  assert r["step_time_p90_s"] >= r["step_time_median_s"]
  assert r["examples_per_sec"] == pytest.approx(16 / r["step_time_median_s"])
  # XLA executes the analytic matmuls and elementwise work besides: a count far below them means
  # loop bodies counted once (or a model count too high: 3x a frozen tower's forward was 1.6x).
  assert r["model_tflops_per_step"] <= r["xla_tflops_per_step"], r["xla_flops_source"]
  assert set(PEAK_DEPENDENT) <= set(r)
  json.dumps(r)  # the JSON line needs no custom encoder
  table = bench.format_table(r)
  assert table.startswith("| metric | value |") and r["machine"] in table


def test_mesh_run_shards_and_has_no_mfu_on_cpu(mesh_run):
  _, r = mesh_run
  assert r["num_devices"] == 8 and r["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
  assert r["device_kind"] == "cpu" and r["peak_tflops"] is None and r["mfu"] is None and r["hfu"] is None
  assert "n/a (no known peak" in bench.format_table(r)


def test_peak_flops_gives_mfu_and_loops_are_counted_in_full(one_device_run, mesh_run):
  cfg, r = one_device_run
  assert r["num_devices"] == 1 and r["peak_tflops"] == 1.0
  # One device: XLA counts the step once. The model count leaves out its elementwise, loss and
  # optimizer work, 8% at these widths (32; 3-6% from 64 up: tests/test_flops.py).
  assert 0.9 * r["xla_tflops_per_step"] <= r["model_tflops_per_step"], r["xla_flops_source"]
  achieved = r["model_tflops_per_step"] / r["step_time_median_s"]
  assert r["mfu"] == pytest.approx(achieved / 1.0)
  assert r["hfu"] == pytest.approx(r["xla_tflops_per_step"] / r["step_time_median_s"])
  assert "loop-free" in r["xla_flops_source"]
  # Sharded, the devices together execute at least the one-device (whole batch, loop-free) count.
  assert mesh_run[1]["xla_tflops_per_step"] >= 0.95 * r["xla_tflops_per_step"]
  assert mesh_run[1]["params_bytes_per_device"] < r["params_bytes_per_device"]  # fsdp x tensor shards


def test_a_model_without_flop_count_has_no_mfu_and_says_why(one_device_run):
  r = dict(one_device_run[1], model_tflops_per_step=None, model_tflops_per_sec_per_device=None, mfu=None,
           model_flops_missing="model 'x' declares no FLOP count")
  rows = [line for line in bench.format_table(r).splitlines() if line.startswith(("| model TFLOP", "| MFU"))]
  assert len(rows) == 3 and all("declares no FLOP count" in row for row in rows), rows


def test_matmul_loops_are_found_inside_nested_jaxprs():
  import jax.numpy as jnp
  w = jnp.ones((3, 4, 4))
  layers = lambda x: jax.lax.scan(lambda c, wi: (jnp.tanh(c @ wi), None), x, w)[0]
  rounds = lambda x: jax.lax.fori_loop(0, 5, lambda i, c: c * 2.0 + 1.0, x)  # like threefry's rounds
  loops = lambda f, *args: bench.has_matmul_loops(jax.make_jaxpr(f)(*args).jaxpr)
  x = jnp.ones((2, 4))
  assert loops(layers, x) and loops(jax.jit(jax.grad(lambda x: layers(x).sum())), x)
  assert not loops(lambda x: rounds(x) @ w[0], x)
  assert not loops(lambda x: jnp.stack([x @ wi for wi in w]), x)


@pytest.mark.parametrize("data_format", ["caption", "vlm"])
def test_synthetic_batch_looks_like_the_pipeline(data_format):
  cfg = tiny_config()
  cfg.data.format, cfg.data.chunks = data_format, 2
  tok = tokenizers.get_tokenizer(cfg.data.tokenizer)
  mesh = make_mesh(dict(data=2, fsdp=2, tensor=2))
  batch = bench.synthetic_batch(cfg, tok, mesh)
  assert {k: v.ndim for k, v in batch.items()} == dict(
      {"image": 4, "text": 2} if data_format == "caption" else {"image": 5, "text": 2, "loss_mask": 2})
  assert all(v.sharding.spec[0] == BATCH_AXES for v in batch.values())
  image, ids = np.asarray(batch["image"]), np.asarray(batch["text"])
  assert image.shape[0] == 16 and image.shape[-3:] == (32, 32, 3) and -1 <= image.min() < image.max() <= 1
  assert ids.shape == (16, 12) and ids.min() >= 0 and ids.max() < tok.vocab_size
  real = ids != tok.pad_id
  lengths = real.sum(1)
  assert (ids[:, 0] == tok.bos_id).all() and (lengths >= 6).all() and lengths.min() < lengths.max()
  assert all(real[i, :n].all() and ids[i, n - 1] == tok.eos_id for i, n in enumerate(lengths))
  assert ((ids == tok.eos_id).sum(1) == 1).all()  # one EOS, the last real token: pooling finds it
  assert ((ids == tok.image_id).sum(1) == (2 if data_format == "vlm" else 0)).all()
  if data_format == "vlm":
    mask = np.asarray(batch["loss_mask"])
    assert mask.dtype == bool and mask.any(1).all() and not (mask & ~real).any()


def _cli(*args, env_extra=None, env_drop=()):
  env = dict(os.environ, JAX_PLATFORMS="cpu", **(env_extra or {}))
  if not env_extra:
    env.pop("XLA_FLAGS", None)
  for key in env_drop:
    env.pop(key, None)
  return subprocess.run([sys.executable, "-m", "vljax.bench", "--config", "configs/clip_shapes.py", *args],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


TINY = ["--config.model.image.variant=mu/8", "--config.model.text.variant=mu", "--config.model.contrastive.embed_dim=16",
        "--config.data.image_size=32", "--config.data.max_len=12", "--config.batch_size=16"]


def test_cli_prints_table_and_json(tmp_path):
  """Started as a user would (no GLIBC_TUNABLES, which `make test` sets), the command re-executes
  with huge pages for malloc where they help (vljax/allocator.py), compiles with XLA's memory-ordered
  CPU schedule (vljax/xla_cpu.py), and says both."""
  out = tmp_path / "bench.json"
  drop = ("GLIBC_TUNABLES", allocator.ENV)
  proc = _cli(*TINY, "--steps", "2", "--warmup", "1", "--json_out", str(out), env_drop=drop)
  user_env = {k: v for k, v in os.environ.items() if k not in drop}
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  assert "| metric | value |" in lines and any(line.startswith("| MFU") and "n/a" in line for line in lines)
  result = json.loads(next(line for line in lines if line.startswith("json: "))[len("json: "):])
  assert result["steps"] == 2 and result["batch_size"] == 16 and result["mfu"] is None
  huge = allocator.huge_pages_env(user_env, allocator.glibc_version(), allocator.thp_mode())
  assert result["malloc"] == (allocator.describe(huge) if huge else allocator.describe(user_env))
  assert any(line.startswith("| malloc") and result["malloc"] in line for line in lines)
  settings = xla_cpu.with_cpu_settings("")
  assert result["xla_flags"] == settings and any(settings in line for line in lines)
  assert json.loads(out.read_text()) == result


@pytest.mark.parametrize("args, env_extra, message", [
    (["--config.no_such_key=1"], None, "no_such_key"),
    (["--config.model.name=perceiver"], None, "perceiver"),
    (["--config.batch_size=15"], {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, "batch_size=15"),
])
def test_cli_bad_input_exits_2_naming_it(args, env_extra, message):
  proc = _cli(*args, env_extra=env_extra)
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
  error = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert error and message in error[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
