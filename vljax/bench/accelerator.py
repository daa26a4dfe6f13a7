"""`python -m vljax.bench.accelerator [--dry_run] [--out DIR] [--batch_per_device N]
[--recipes clip_vit_b16,siglip_vit_b16,coca_vit_b16] [--steps 20] [--warmup 3] [--skip_checks]`

The accelerator table in one command. First the numerics checks (vljax/bench/gpu_checks.py: bf16 and
cuDNN attention against XLA float32), then `python -m vljax.bench` for each recipe in bf16 at
batch_per_device x the devices present, once with the recipe's own model.remat and once with
remat=none. Every step is its own process: this one never starts a JAX backend (on GPU it would hold
the memory the benchmarks need), and a run that fails or runs out of memory is a row of the table
with the last line of its error, the others still run. Writes DIR/results.md, DIR/results.json,
DIR/checks.json, DIR/runs/*.json and DIR/logs/*.log, and prints the markdown table last.
--dry_run prints the plan, one command a line, and runs nothing but a device count.
Bad input exits 2 with `error: ...`; failed numerics checks exit 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import time
from typing import Any

from vljax.bench import gpu_checks

ROOT = gpu_checks.ROOT
CONFIG_DIR = os.path.join(ROOT, "configs")
DEFAULT_RECIPES = ("clip_vit_b16", "siglip_vit_b16", "coca_vit_b16")
BF16 = "--config.precision.compute_dtype=bfloat16"
# Settings that decide how much device memory a run may use: recorded with the results.
MEMORY_ENV = ("XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_ALLOCATOR",
              "XLA_FLAGS")
COLUMNS = ("recipe", "remat", "global batch", "step time (median)", "examples/s", "MFU", "HFU",
           "memory / device", "compile", "device", "status")


class UsageError(ValueError):
  """Bad command-line input: printed as `error: ...`, exit code 2."""


class _Parser(argparse.ArgumentParser):
  def error(self, message: str):  # argparse's own complaints (a non-integer, an unknown option) too
    raise UsageError(message)


@dataclasses.dataclass
class BenchRun:
  recipe: str
  remat: str
  global_batch: int
  json_out: str
  command: list[str]

  @property
  def name(self) -> str:
    return f"{self.recipe}_remat-{self.remat}"


def available_recipes() -> list[str]:
  """NAME of every configs/NAME.py that defines get_config."""
  names = []
  for file in sorted(os.listdir(CONFIG_DIR)):
    if file.endswith(".py") and file != "common.py":
      with open(os.path.join(CONFIG_DIR, file)) as f:
        if "def get_config" in f.read():
          names.append(file[:-3])
  return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = _Parser(prog="python -m vljax.bench.accelerator", description=__doc__.split("\n\n")[1])
  parser.add_argument("--dry_run", action="store_true", help="print the commands it would run; run none")
  parser.add_argument("--out", default="bench_results", help="results directory (default: bench_results/)")
  parser.add_argument("--batch_per_device", type=int, default=256,
                      help="examples per device; global batch = this x devices (default 256: bf16 on 80 GB)")
  parser.add_argument("--recipes", default=",".join(DEFAULT_RECIPES), help="comma-separated configs/NAME.py names")
  parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
  parser.add_argument("--skip_checks", action="store_true", help="no numerics checks, benchmarks only")
  parser.add_argument("--timeout_s", type=float, default=1800, help="a run still going after this is stopped")
  args = parser.parse_args(argv)
  args.recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
  valid = available_recipes()
  unknown = [r for r in args.recipes if r not in valid]
  if unknown or not args.recipes:
    what = f"unknown recipe {unknown[0]!r}" if unknown else "no recipe given"
    raise UsageError(f"--recipes: {what}; valid: {', '.join(valid)} (the files configs/NAME.py)")
  for flag, value, low in (("batch_per_device", args.batch_per_device, 1), ("steps", args.steps, 1),
                           ("warmup", args.warmup, 0)):
    if value < low:
      raise UsageError(f"--{flag}={value} must be >= {low}")
  if args.timeout_s <= 0:
    raise UsageError(f"--timeout_s={args.timeout_s:g} must be > 0")
  return args


def recipe_remat(recipe: str) -> str:
  """The recipe's own model.remat ("none" where it sets none)."""
  from vljax import config as config_lib
  return str(config_lib.load_config(os.path.join(CONFIG_DIR, f"{recipe}.py")).model.get("remat", "none"))


def probe_devices(timeout_s: float = 300) -> tuple[int, str, str]:
  """(count, platform, device kind) of the devices a JAX process started from here sees, asked of a
  child process so that this one never holds device memory."""
  code = "import jax; d = jax.devices(); print(len(d), d[0].platform, d[0].device_kind, sep='\\t')"
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
  if proc.returncode:
    raise RuntimeError(f"could not list the devices: {last_error_line(proc.stderr) or proc.returncode}")
  count, platform, kind = proc.stdout.strip().splitlines()[-1].split("\t")
  return int(count), platform, kind


def bench_command(recipe: str, remat: str, global_batch: int, steps: int, warmup: int, json_out: str) -> list[str]:
  return [sys.executable, "-m", "vljax.bench", "--config", f"configs/{recipe}.py",
          f"--config.batch_size={global_batch}", f"--config.model.remat={remat}", BF16,
          "--steps", str(steps), "--warmup", str(warmup), "--json_out", json_out]


def checks_command(out_dir: str) -> list[str]:
  return [sys.executable, "-m", "vljax.bench.gpu_checks", "--json_out", os.path.join(out_dir, "checks.json")]


def make_plan(recipes: list[str], remats: dict[str, str], batch_per_device: int, num_devices: int, steps: int,
              warmup: int, out_dir: str) -> list[BenchRun]:
  """Each recipe with its own remat, then with remat=none (once where they are the same)."""
  plan, batch = [], batch_per_device * num_devices
  for recipe in recipes:
    for remat in dict.fromkeys((remats[recipe], "none")):
      json_out = os.path.join(out_dir, "runs", f"{recipe}_remat-{remat}.json")
      command = bench_command(recipe, remat, batch, steps, warmup, json_out)
      plan.append(BenchRun(recipe, remat, batch, json_out, command))
  return plan


_EXCEPTION_LINE = re.compile(r"^(error: |[A-Za-z_][\w.]*(Error|Exception)\b)")


def last_error_line(text: str) -> str:
  """The line that says what went wrong: the last `error: ...` or exception line of a process's
  stderr (log lines may follow a traceback), else its last line."""
  lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
  named = [line for line in lines if _EXCEPTION_LINE.match(line)]
  line = (named or lines or [""])[-1]
  return line if len(line) <= 300 else line[:297] + "..."


def is_oom(text: str) -> bool:
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def run_bench(run: BenchRun, log_dir: str, timeout_s: float) -> dict[str, Any]:
  """One benchmark process; its row: the bench JSON as `result`, or status oom / failed / timeout."""
  if os.path.exists(run.json_out):  # a result left by an earlier invocation must not pass for this one
    os.remove(run.json_out)
  log = os.path.join(log_dir, f"{run.name}.log")
  try:
    proc = subprocess.run(run.command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
  except subprocess.TimeoutExpired as e:
    code = None
    stdout, stderr = (s.decode(errors="replace") if isinstance(s, bytes) else s or ""
                      for s in (e.stdout, e.stderr))
  with open(log, "w") as f:
    f.write(f"$ {shlex.join(run.command)}\n{stdout}\n--- stderr ---\n{stderr}")
  row = dict(recipe=run.recipe, remat=run.remat, global_batch=run.global_batch, command=shlex.join(run.command),
             log=log, status="ok", error=None, result=None)
  if code == 0 and os.path.exists(run.json_out):
    with open(run.json_out) as f:
      row["result"] = json.load(f)
  elif code is None:
    row.update(status="timeout", error=f"stopped after {timeout_s:g} s")
  else:
    row.update(status="oom" if is_oom(stderr) else "failed",
               error=last_error_line(stderr) or (f"killed by signal {-code}" if code < 0 else f"exit code {code}"))
  return row


def _pct(x) -> str:
  return "n/a" if x is None else f"{100 * x:.1f}%"


def _gib(n) -> str:
  return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def table_cells(row: dict[str, Any]) -> list[str]:
  """One row of the markdown table: the bench numbers, or dashes and what went wrong."""
  head, r = [row["recipe"], row["remat"], str(row["global_batch"])], row.get("result")
  if r is None:
    status = {"oom": "OOM", "timeout": "TIMEOUT"}.get(row["status"], "FAILED")
    return head + ["-"] * 6 + [row.get("device", "n/a"), f"{status}: {row['error']}"]
  return head + [f"{1e3 * r['step_time_median_s']:.1f} ms", f"{r['examples_per_sec']:.1f}", _pct(r.get("mfu")),
                 _pct(r.get("hfu")), _gib(r.get("memory_per_device_bytes")), f"{r['compile_s']:.1f} s",
                 f"{r['num_devices']} x {r['device_kind']}", "ok"]


def format_table(rows: list[dict[str, Any]]) -> str:
  lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  lines += ["| " + " | ".join(c.replace("|", "\\|") for c in table_cells(row)) + " |" for row in rows]
  return "\n".join(lines)


def format_markdown(payload: dict[str, Any]) -> str:
  """results.md: what ran where, the numerics checks, the table."""
  lines = ["# vljax accelerator table", "",
           f"{payload['num_devices']} x {payload['device_kind']} ({payload['platform']}); "
           f"{payload['batch_per_device']} examples per device, bfloat16 compute; median of {payload['steps']} "
           f"steps after {payload['warmup']} warm-up.", ""]
  checks = payload.get("checks")
  if checks is None:
    lines.append("Numerics checks: skipped.")
  elif "checks" not in checks:
    lines.append(f"Numerics checks: FAILED to run ({checks.get('error')}).")
  else:
    lines.append(f"Numerics checks ({checks['backend']}): {'all ok' if checks['ok'] else 'FAILED'}")
    lines += [f"- {gpu_checks.describe(c)}" for c in checks["checks"]]
  return "\n".join(lines + ["", format_table(payload["runs"]), ""])


def write_results(out_dir: str, payload: dict[str, Any]) -> tuple[str, str]:
  """(results.md, results.json) written under out_dir."""
  os.makedirs(out_dir, exist_ok=True)
  md, js = os.path.join(out_dir, "results.md"), os.path.join(out_dir, "results.json")
  with open(md, "w") as f:
    f.write(format_markdown(payload))
  with open(js, "w") as f:
    json.dump(payload, f, indent=1)
  return md, js


def run_checks(out_dir: str, timeout_s: float) -> dict[str, Any]:
  """The numerics checks in their own process (their lines go to this terminal); their summary."""
  command = checks_command(out_dir)
  path = command[-1]
  if os.path.exists(path):
    os.remove(path)
  try:
    code = subprocess.run(command, cwd=ROOT, timeout=timeout_s).returncode
  except subprocess.TimeoutExpired:
    return {"ok": False, "error": f"stopped after {timeout_s:g} s"}
  if not os.path.exists(path):
    return {"ok": False, "error": f"exit code {code}, no summary written"}
  with open(path) as f:
    return json.load(f)


def _plan_header(plan: list[BenchRun], devices: tuple[int, str, str], args, out_dir: str) -> str:
  n, platform, kind = devices
  return (f"# {len(plan)} bench run(s) on {n} x {kind} ({platform}), global batch {args.batch_per_device} x {n} = "
          f"{args.batch_per_device * n}; results to {out_dir}; commands run from {ROOT}")


def main(argv: list[str] | None = None) -> int:
  try:
    args = parse_args(argv)
    remats = {r: recipe_remat(r) for r in args.recipes}
    devices = probe_devices()
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except (RuntimeError, subprocess.TimeoutExpired, ValueError, ImportError) as e:  # a recipe or JAX won't load
    print(f"error: {e}", file=sys.stderr)
    return 1
  out_dir = os.path.abspath(args.out)
  plan = make_plan(args.recipes, remats, args.batch_per_device, devices[0], args.steps, args.warmup, out_dir)
  print(_plan_header(plan, devices, args, out_dir), flush=True)
  if args.dry_run:
    print("\n".join(shlex.join(c) for c in ([] if args.skip_checks else [checks_command(out_dir)]) +
                    [run.command for run in plan]))
    return 0
  for sub in ("runs", "logs"):
    os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
  checks = None if args.skip_checks else run_checks(out_dir, args.timeout_s)
  rows = []
  payload = dict(num_devices=devices[0], platform=devices[1], device_kind=devices[2],
                 batch_per_device=args.batch_per_device, steps=args.steps, warmup=args.warmup,
                 env={k: os.environ[k] for k in MEMORY_ENV if k in os.environ}, checks=checks, runs=rows)
  for i, run in enumerate(plan, 1):
    print(f"[{i}/{len(plan)}] {run.recipe} remat={run.remat} batch={run.global_batch} ...", flush=True)
    start = time.perf_counter()
    row = run_bench(run, os.path.join(out_dir, "logs"), args.timeout_s)
    rows.append(dict(row, device=f"{devices[0]} x {devices[2]}"))
    print(f"    {row['status']} in {time.perf_counter() - start:.0f} s" + (f": {row['error']}" if row["error"] else ""),
          flush=True)
    md, js = write_results(out_dir, payload)  # after every run: an interrupted sweep keeps what it measured
  print(f"wrote {md} and {js}\n")
  print(format_table(rows))
  return 0 if checks is None or checks.get("ok") else 1


if __name__ == "__main__":
  sys.exit(main())
