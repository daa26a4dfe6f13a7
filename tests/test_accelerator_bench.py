"""`python -m vljax.bench.accelerator` (launch/gpu_bench.sh), the accelerator table in one command: the plan
--dry_run prints, bad input as `error: ...` with exit 2, the results table with failed runs in it, and the
numerics checks (vljax/bench/gpu_checks.py) on CPU at tiny sizes. Benchmark processes are stand-ins here:
no B/16 model is built, compiled or timed."""

import json
import os
import shlex
import subprocess
import sys

import jax
import pytest

from conftest import tiny_config
from vljax import config as config_lib
from vljax.bench import accelerator, gpu_checks
from vljax.models import layers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = ("clip_vit_b16", "siglip_vit_b16", "coca_vit_b16")
TINY_SHAPES = {"tiny": (2, 16, 2, 8, False), "tiny_causal": (2, 16, 2, 8, True)}


def _cpu_env():
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")


def test_dry_run_plans_each_recipe_with_its_remat_and_none(tmp_path):
  out = tmp_path / "results"
  proc = subprocess.run(["bash", "launch/gpu_bench.sh", "--dry_run", "--out", str(out), "--batch_per_device", "4",
                         "--steps", "2", "--warmup", "1"], cwd=ROOT, env=_cpu_env(), capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  assert lines[0].startswith("# 6 bench run(s) on 8 x ") and "4 x 8 = 32" in lines[0]
  assert [shlex.split(line)[1:] for line in lines if "vljax.bench.gpu_checks" in line] == [
      ["-m", "vljax.bench.gpu_checks", "--json_out", str(out / "checks.json")]]
  commands = [shlex.split(line) for line in lines if " -m vljax.bench --config" in line]
  assert len(commands) == 6 and len(lines) == 8, proc.stdout
  planned = set()
  for cmd in commands:
    recipe = os.path.basename(cmd[cmd.index("--config") + 1])[:-3]
    remat = next(a.split("=", 1)[1] for a in cmd if a.startswith("--config.model.remat="))
    planned.add((recipe, remat))
    assert "--config.precision.compute_dtype=bfloat16" in cmd and "--config.batch_size=32" in cmd
    assert cmd[cmd.index("--steps") + 1] == "2" and cmd[cmd.index("--warmup") + 1] == "1"
    assert cmd[cmd.index("--json_out") + 1] == str(out / "runs" / f"{recipe}_remat-{remat}.json")
  own = {r: config_lib.load_config(os.path.join(ROOT, "configs", f"{r}.py")).model.remat for r in RECIPES}
  assert planned == {(r, m) for r in RECIPES for m in (own[r], "none")}
  assert not out.exists()  # a dry run writes nothing


def test_plan_global_batch_is_per_device_times_devices():
  n = jax.device_count()
  plan = accelerator.make_plan(["a", "b"], {"a": "full", "b": "none"}, 3, n, 5, 0, "/o")
  assert [(r.recipe, r.remat, r.global_batch) for r in plan] == [("a", "full", 3 * n), ("a", "none", 3 * n),
                                                                 ("b", "none", 3 * n)]
  assert f"--config.batch_size={3 * n}" in plan[0].command and plan[0].json_out == "/o/runs/a_remat-full.json"


@pytest.mark.parametrize("args, message", [
    (["--recipes", "clip_vit_b16,clip_vit_b99"], "'clip_vit_b99'"),
    (["--batch_per_device", "0"], "--batch_per_device=0"),
    (["--steps", "0"], "--steps=0"),
    (["--steps", "many"], "'many'"),
])
def test_bad_input_exits_2_naming_it(args, message):
  proc = subprocess.run([sys.executable, "-m", "vljax.bench.accelerator", "--dry_run", *args], cwd=ROOT,
                        env=_cpu_env(), capture_output=True, text=True, timeout=60)
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert errors and message in errors[0] and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  if "recipes" in args:
    assert "valid: " in errors[0] and all(r in errors[0] for r in RECIPES)


def _bench_result(ms, mfu):
  return dict(step_time_median_s=ms / 1e3, examples_per_sec=2048 / (ms / 1e3), mfu=mfu, hfu=None if mfu is None
              else mfu * 1.3, memory_per_device_bytes=40 * 2**30, compile_s=61.5, num_devices=8,
              device_kind="NVIDIA H100 80GB HBM3", batch_size=2048)


def _row(recipe, remat, status="ok", error=None, result=None):
  return dict(recipe=recipe, remat=remat, global_batch=2048, command="python -m vljax.bench ...", log="x.log",
              status=status, error=error, result=result, device="8 x NVIDIA H100 80GB HBM3")


def test_table_has_a_row_per_run_and_says_which_failed(tmp_path):
  oom = "jaxlib._jax.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory | allocating 9.1GiB"
  payload = dict(num_devices=8, platform="gpu", device_kind="NVIDIA H100 80GB HBM3", batch_per_device=256, steps=20,
                 warmup=3, env={}, checks=None,
                 runs=[_row("clip_vit_b16", "minimal", result=_bench_result(412.3, 0.452)),
                       _row("clip_vit_b16", "none", "oom", oom),
                       _row("siglip_vit_b16", "minimal", result=_bench_result(500.0, None))])
  md_path, json_path = accelerator.write_results(str(tmp_path), payload)
  with open(json_path) as f:
    assert json.load(f) == payload
  md = open(md_path).read()
  assert "Numerics checks: skipped." in md
  table = md[md.index("| recipe |"):].strip().splitlines()
  assert table == accelerator.format_table(payload["runs"]).splitlines() and len(table) == 2 + 3
  # as many cells as columns: the "|" in the error is escaped
  assert all(line.count(" | ") == len(accelerator.COLUMNS) - 1 for line in table[:1] + table[2:])
  ok, failed, no_peak = table[2:]
  assert "| clip_vit_b16 | minimal | 2048 | 412.3 ms |" in ok and "45.2%" in ok and "58.8%" in ok
  assert "40.00 GiB" in ok and "61.5 s" in ok and "8 x NVIDIA H100 80GB HBM3" in ok and ok.endswith("| ok |")
  assert failed.startswith("| clip_vit_b16 | none | 2048 | - |") and "OOM: jaxlib._jax.XlaRuntimeError" in failed
  assert "9.1GiB" in failed and "8 x NVIDIA H100" in failed
  assert "| n/a | n/a |" in no_peak  # MFU and HFU where the device has no known peak


_FAKE_BENCH = """import json, sys, time
mode, out = sys.argv[1], sys.argv[2]
if mode == "ok":
    json.dump({RESULT}, open(out, "w"))
elif mode == "oom":
    import atexit
    atexit.register(lambda: print("I0000 00:00 client.cc:1] shutting down", file=sys.stderr))  # after the traceback
    print("W0000 some warning", file=sys.stderr)
    raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9876 bytes.")
else:
    time.sleep(60)
"""


def _fake_bench(tmp_path):
  script = tmp_path / "fake_bench.py"
  script.write_text(_FAKE_BENCH.replace("{RESULT}", repr(_bench_result(100.0, 0.5))))
  return lambda mode, json_out: [sys.executable, str(script), mode, json_out]


def test_run_bench_records_result_oom_and_timeout(tmp_path):
  fake = _fake_bench(tmp_path)
  (tmp_path / "logs").mkdir()
  rows = {}
  for mode in ("ok", "oom", "hang"):
    out = str(tmp_path / f"{mode}.json")
    run = accelerator.BenchRun(f"{mode}_recipe", "none", 16, out, fake(mode, out))
    rows[mode] = accelerator.run_bench(run, str(tmp_path / "logs"), timeout_s=1 if mode == "hang" else 60)
  assert rows["ok"]["status"] == "ok" and rows["ok"]["result"]["mfu"] == 0.5 and rows["ok"]["error"] is None
  assert rows["oom"]["status"] == "oom" and rows["oom"]["result"] is None
  assert rows["oom"]["error"] == "RuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9876 bytes."
  assert "shutting down" in open(rows["oom"]["log"]).read()
  assert rows["hang"]["status"] == "timeout" and "1 s" in rows["hang"]["error"]


def test_command_writes_table_and_json_and_prints_table_last(tmp_path, monkeypatch, capsys):
  fake = _fake_bench(tmp_path)
  checks = tmp_path / "fake_checks.py"
  checks.write_text("import json, sys\njson.dump({'backend': 'cpu', 'ok': False, 'checks': [{'check': 'attention x', "
                    "'errors': {'xla': 0.5}, 'failures': {}, 'tolerance': 0.02, 'cudnn_ran': None, 'ok': False}]}, "
                    "open(sys.argv[1], 'w'))\n")
  monkeypatch.setattr(accelerator, "probe_devices", lambda: (8, "cpu", "cpu"))
  monkeypatch.setattr(accelerator, "checks_command", lambda out: [sys.executable, str(checks),
                                                                   os.path.join(out, "checks.json")])
  # clip's runs succeed, coca's run out of memory
  monkeypatch.setattr(accelerator, "bench_command",
                      lambda recipe, *args: fake("ok" if recipe.startswith("clip") else "oom", args[-1]))
  out = tmp_path / "out"
  code = accelerator.main(["--out", str(out), "--recipes", "clip_vit_b16,coca_vit_b16", "--batch_per_device", "2"])
  printed = capsys.readouterr().out.strip().splitlines()
  assert code == 1  # the numerics checks failed; the benchmarks still ran
  result = json.loads((out / "results.json").read_text())
  statuses = [(r["recipe"], r["status"]) for r in result["runs"]]
  assert statuses == [("clip_vit_b16", "ok")] * 2 + [("coca_vit_b16", "oom")] * 2
  assert result["runs"][0]["global_batch"] == 16 and result["checks"]["ok"] is False
  assert printed[-6:] == accelerator.format_table(result["runs"]).splitlines()
  md = (out / "results.md").read_text()
  assert "Numerics checks (cpu): FAILED" in md and "FAIL attention x: rel. error xla 5.00e-01" in md
  assert sorted(os.listdir(out / "logs")) == sorted(f"{r['recipe']}_remat-{r['remat']}.log" for r in result["runs"])


def test_numerics_checks_on_cpu_at_tiny_sizes(capsys):
  summary = gpu_checks.run_checks(tiny_config(), TINY_SHAPES, tower_batch=2)
  printed = capsys.readouterr().out
  assert "cuDNN unavailable here" in printed and summary["cudnn_available"] is False and summary["ok"], printed
  assert [c["check"] for c in summary["checks"]] == ["attention tiny", "attention tiny_causal",
                                                      "towers composable bf16 (xla attention)"]
  for check in summary["checks"]:
    assert check["ok"] and check["cudnn_ran"] is None and gpu_checks.describe(check) in printed
    # bf16 rounding shows (the comparison is not float32 against itself) and stays inside the tolerance
    assert all(1e-5 < e < check["tolerance"] for e in check["errors"].values()), check
  assert set(summary["checks"][0]["errors"]) == {"xla"}  # no cuDNN result off GPU
  assert set(summary["checks"][2]["errors"]) == {"img_emb", "txt_emb"}
  json.dumps(summary)


def test_attention_check_catches_a_wrong_kernel(monkeypatch):
  """A bf16 path that drops the causal mask lands far outside the tolerance."""
  real = layers.attention
  monkeypatch.setattr(layers, "attention", lambda q, k, v, mask, is_causal, impl: real(
      q, k, v, mask, is_causal and q.dtype != jax.numpy.bfloat16, impl))
  check = gpu_checks.check_attention("tiny_causal", *TINY_SHAPES["tiny_causal"])
  assert not check["ok"] and check["errors"]["xla"] > 10 * check["tolerance"]
  assert gpu_checks.describe(check).startswith("FAIL attention tiny_causal")
  assert gpu_checks.relative_error([1.1, 2.2], [1.0, 2.0]) == pytest.approx(0.1)
