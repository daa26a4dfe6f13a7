"""Runs the `cross_path` tests under several x86 instruction sets and prints, per test, its
tolerance and the worst error seen under each (XLA emits other code, so other roundings, per ISA).

    .venv/bin/python tests/isa_sweep.py [--isas SSE4_2,AVX,AVX2,default] [--json_out F] [-- PYTEST_ARGS]

"default" is the machine's own instruction set. Each ISA is one `pytest -m cross_path -n 2` run
with XLA_FLAGS=--xla_cpu_max_isa=ISA (added to any XLA_FLAGS already set) and VLJAX_NUMERICS_LOG
pointing at a file the tests append to (tests/conftest.py). Exits 1 when any run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KNOWN_ISAS = ("SSE4_2", "AVX", "AVX2", "AVX512", "default")


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def run_under(isa: str, pytest_args: list[str]) -> tuple[dict, list[dict]]:
  """One pytest run under `isa`: ({isa, returncode, seconds, summary}, the tests' error rows)."""
  env = dict(os.environ, VLJAX_TEST_COMPILE="full")  # machine code as users' runs compile it (tests/conftest.py)
  if isa != "default":
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_cpu_max_isa={isa}".strip()
  with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as log:
    env["VLJAX_NUMERICS_LOG"] = log.name
    cmd = [sys.executable, "-m", "pytest", "-m", "cross_path", "-n", "2", "-q", "-p", "no:cacheprovider",
           *pytest_args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    rows = [json.loads(line) for line in log.read().splitlines() if line.strip()]
  lines = proc.stdout.strip().splitlines()
  summary = lines[-1] if lines else proc.stderr.strip()[-300:]
  if proc.returncode:
    print(proc.stdout[-5000:], file=sys.stderr)
  return dict(isa=isa, returncode=proc.returncode, seconds=round(seconds, 1), summary=summary), rows


def _cell(row: dict | None) -> str:
  if row is None:
    return "not run"
  share = row["max_share"]
  share = "inf" if share == float("inf") else f"{share:.2g}"
  return f"{row['max_abs']:.2g} ({share})"


def _tolerances(found: set[str]) -> str:
  """Fixed tolerances as written; bounds computed per comparison (tests/numerics.py) as their range."""
  def fixed(t: str) -> bool:
    return t == "exact" or all(len(v.split("e")[0].replace(".", "").strip("0")) <= 1
                               for v in (part.split("=")[1] for part in t.split(", ")))
  shown = sorted(t for t in found if fixed(t))
  derived = sorted(float(t.split("=")[1]) for t in found if not fixed(t) and t.startswith("atol=") and "," not in t)
  if derived:
    shown.append(f"{len(derived)} derived bounds, atol {derived[0]:.2g} to {derived[-1]:.2g}")
  shown += sorted(t for t in found if not fixed(t) and not (t.startswith("atol=") and "," not in t))
  return "; ".join(shown) or "-"


def table(runs: list[dict], rows_by_isa: dict[str, list[dict]]) -> str:
  """Markdown: test | tolerance | per ISA, the |error| of the comparison that used most of its
  tolerance (that share: 1 is the tolerance itself)."""
  isas = [r["isa"] for r in runs]
  by_test: dict[str, dict[str, dict]] = {}
  tolerances: dict[str, set] = {}
  for isa in isas:
    for row in rows_by_isa[isa]:
      by_test.setdefault(row["test"], {})[isa] = row
      tolerances.setdefault(row["test"], set()).update(row["tolerances"])
  out = ["Per test, |error| of the comparison that used most of its tolerance (that share; 1 = the tolerance):",
         "", "| test | tolerance | " + " | ".join(isas) + " |", "|---|---|" + "---|" * len(isas)]
  for test in sorted(by_test):
    cells = [_cell(by_test[test].get(isa)) for isa in isas]
    out.append(f"| `{test.removeprefix('tests/')}` | {_tolerances(tolerances[test])} | "
               + " | ".join(cells) + " |")
  out.append("")
  out.append("Per file, the largest share of its tolerance that any comparison used:")
  out.append("")
  out.append("| file | tests | " + " | ".join(isas) + " |")
  out.append("|---|---|" + "---|" * len(isas))
  files = sorted({test.split("::")[0] for test in by_test})
  for name in files:
    tests = [t for t in by_test if t.split("::")[0] == name]
    worst = [max((by_test[t][isa]["max_share"] for t in tests if isa in by_test[t]), default=None) for isa in isas]
    out.append(f"| `{name.removeprefix('tests/')}` | {len(tests)} | "
               + " | ".join("not run" if w is None else f"{w:.2g}" for w in worst) + " |")
  out.append("")
  out.append("| ISA | result | seconds |")
  out.append("|---|---|---|")
  out += [f"| {r['isa']} | {r['summary']} | {r['seconds']} |" for r in runs]
  return "\n".join(out)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--isas", default="SSE4_2,AVX,AVX2,default",
                      help=f"comma-separated, from {', '.join(KNOWN_ISAS)} (XLA knows more)")
  parser.add_argument("--json_out", default=None, help="also write the runs and rows as JSON here")
  parser.add_argument("pytest_args", nargs="*", help="after --: passed to pytest (e.g. a test path)")
  args = parser.parse_args(argv)
  isas = [i.strip() for i in args.isas.split(",") if i.strip()]
  bad = [i for i in isas if not i.replace("_", "").isalnum()]
  if not isas or bad:
    print(f"error: --isas {args.isas!r} must be names such as {', '.join(KNOWN_ISAS)}", file=sys.stderr)
    return 2
  if platform.machine() not in ("x86_64", "AMD64") and isas != ["default"]:
    print(f"error: --xla_cpu_max_isa names x86 instruction sets; this machine is {platform.machine()}",
          file=sys.stderr)
    return 2
  runs, rows = [], {}
  for isa in isas:
    run, rows[isa] = run_under(isa, args.pytest_args)
    runs.append(run)
    print(f"{isa}: {run['summary']} ({run['seconds']} s)", file=sys.stderr, flush=True)
  print(f"machine: {cpu_name()}, {os.cpu_count()} CPU cores")
  print(table(runs, rows))
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(dict(cpu=cpu_name(), runs=runs, rows=rows), f, indent=1)
  return 1 if any(r["returncode"] for r in runs) else 0


if __name__ == "__main__":
  sys.exit(main())
