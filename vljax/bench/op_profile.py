"""Where a compiled step's time goes, op by op: a `jax.profiler` trace of a few steps, each kernel event
matched to the HLO instruction it ran (by name, in the compiled module's text) and grouped by kind.

On CPU the kernels are the thunks XLA's runtime logs on the host threads; on GPU, the device planes'
events. The report gives the traced step's wall time beside the kernels' total; the difference is
dispatch, allocation and waiting between kernels. Kernel times are summed over devices and threads,
so with several devices or intra-op threads the kernel total can exceed the wall time."""

from __future__ import annotations

import collections
import glob
import os
import re
import tempfile
import time
from typing import Any

import jax

# `%name = TYPE opcode(` in HLO text; TYPE may be a tuple with spaces, so the opcode is the first
# lower-case word directly followed by "(" after the "=".
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*.*?\s(?P<op>[a-z][\w\-]*)\(")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s.*\{\s*$")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_KIND = re.compile(r"kind=(k\w+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_MATMUL_OPS = {"dot", "convolution"}


def hlo_instructions(hlo_text: str) -> dict[str, dict[str, str]]:
  """Every instruction of a compiled module's text: name -> {"kind", "op_name"}. A fusion's kind
  says what it fuses: "fusion (matmul)" when its computation (or one it calls) holds a dot or a
  convolution, "fusion (reduce)" for a reduction, else "fusion (elementwise)"; other instructions
  are their opcode. op_name is the JAX source path XLA kept in the metadata."""
  computations: dict[str, set[str]] = collections.defaultdict(set)  # computation -> opcodes (+ calls)
  rows = []
  current = None
  for line in hlo_text.splitlines():
    instruction = _INSTRUCTION.match(line)
    if instruction is None:
      computation = _COMPUTATION.match(line)
      if computation and "=" not in line.split("{")[0]:
        current = computation.group("name")
      continue
    op = instruction.group("op")
    computations[current].add(op)
    computations[current].update(f"calls:{c}" for c in _CALLS.findall(line))
    rows.append((instruction.group("name"), op, line))

  def contains(computation: str, ops: set[str], seen: frozenset = frozenset()) -> bool:
    body = computations.get(computation, set())
    if body & ops:
      return True
    return any(contains(c[6:], ops, seen | {computation}) for c in body
               if c.startswith("calls:") and c[6:] not in seen)

  out = {}
  for name, op, line in rows:
    kind = op
    if op == "fusion":
      called = _CALLS.findall(line)
      if any(contains(c, _MATMUL_OPS) for c in called):
        kind = "fusion (matmul)"
      elif any(contains(c, {"reduce", "reduce-window"}) for c in called):
        kind = "fusion (reduce)"
      else:
        kind = "fusion (elementwise)"
      fusion_kind = _KIND.search(line)
      if fusion_kind and fusion_kind.group(1) == "kCustom":
        kind += ", library"  # a library kernel (oneDNN / XNNPACK / cuBLAS / cuDNN) XLA calls
    elif op == "custom-call":
      target = re.search(r'custom_call_target="([^"]+)"', line)
      kind = f"custom-call {target.group(1)}" if target else op
    op_name = _OP_NAME.search(line)
    out[name] = {"kind": kind, "op_name": op_name.group(1) if op_name else ""}
  return out


def _kernel_events(xspace_path: str, names: set[str]) -> list[tuple[str, float]]:
  """(instruction name, seconds) of every trace event named after an instruction: the device planes'
  where there are any (GPU/TPU), else the host's (CPU thunks)."""
  from jax.profiler import ProfileData
  data = ProfileData.from_file(xspace_path)
  by_plane: dict[bool, list[tuple[str, float]]] = {True: [], False: []}
  for plane in data.planes:
    on_device = plane.name.startswith("/device:")
    for line in plane.lines:
      for event in line.events:
        if event.name in names:
          by_plane[on_device].append((event.name, event.duration_ns * 1e-9))
  return by_plane[True] or by_plane[False]


def profile_step(compiled, state, batch, steps: int = 3) -> tuple[dict[str, Any], Any]:
  """Traces `steps` calls of `compiled(state, batch) -> (state, out)`; returns (report, state).

  report: step_time_s (wall, per step, traced), kernel_time_s (per step, summed over devices and
  threads), by_kind [{kind, seconds, share}] and top_ops [{name, kind, op_name, seconds, share}],
  seconds per step, share of kernel time."""
  if steps < 1:
    raise ValueError(f"profile steps={steps} must be >= 1")
  instructions = hlo_instructions(compiled.as_text())
  with tempfile.TemporaryDirectory() as directory:
    with jax.profiler.trace(directory):
      start = time.perf_counter()
      for _ in range(steps):
        state, out = compiled(state, batch)
        jax.block_until_ready((state, out))
      wall = (time.perf_counter() - start) / steps
    paths = glob.glob(os.path.join(directory, "**", "*.xplane.pb"), recursive=True)
    events = _kernel_events(paths[0], set(instructions)) if paths else []
  per_op: dict[str, float] = collections.Counter()
  for name, seconds in events:
    per_op[name] += seconds / steps
  kernel = sum(per_op.values())
  by_kind: dict[str, float] = collections.Counter()
  for name, seconds in per_op.items():
    by_kind[instructions[name]["kind"]] += seconds
  share = lambda s: s / kernel if kernel else 0.0  # noqa: E731
  report = {
      "step_time_s": wall, "kernel_time_s": kernel, "kernel_events": len(events),
      "by_kind": [{"kind": k, "seconds": s, "share": share(s)} for k, s in by_kind.most_common()],
      "top_ops": [{"name": n, **instructions[n], "seconds": s, "share": share(s)} for n, s in per_op.most_common(15)],
  }
  return report, state


def format_profile(report: dict[str, Any], top: int = 15) -> str:
  """Markdown tables: time per step by kind of op, then the `top` most expensive ops."""
  lines = [f"traced step {report['step_time_s'] * 1e3:.1f} ms; kernels {report['kernel_time_s'] * 1e3:.1f} ms "
           f"a step ({report['kernel_events']} kernel events, summed over devices and threads)", "",
           "| kind of op | ms per step | share of kernel time |", "|---|---|---|"]
  lines += [f"| {r['kind']} | {r['seconds'] * 1e3:.2f} | {r['share']:.1%} |" for r in report["by_kind"]]
  lines += ["", "| op | kind | ms per step | share | JAX source |", "|---|---|---|---|---|"]
  for r in report["top_ops"][:top]:
    source = r["op_name"] if len(r["op_name"]) <= 70 else "..." + r["op_name"][-67:]
    lines.append(f"| {r['name']} | {r['kind']} | {r['seconds'] * 1e3:.2f} | {r['share']:.1%} | {source} |")
  return "\n".join(lines)
