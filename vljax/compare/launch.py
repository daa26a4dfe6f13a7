"""What `--dry_run` and `--plan` print: the runs with their matched budgets, and the commands that run
them on a cluster. Each cluster run trains configs/compare/run.py, which rebuilds the run's config
from DIR/suite.json: the same config a local run trains."""

from __future__ import annotations

import os
import re
import shlex
from typing import Any

from vljax.compare import suite as suite_lib
from vljax.compare.markdown import budget_text, number, params_text
from vljax.compare.report import budget_summary
from vljax.compare.resolve import ResolvedSuite

RUN_RECIPE = "configs/compare/run.py"
TASK_LIST = "slurm_tasks.txt"
PLANS = ("slurm", "tpu_pod")


def _columns(rows: list[list[str]]) -> str:
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def dry_run_table(resolved: ResolvedSuite, workdir: str, statuses: dict[tuple[str, int], str]) -> str:
  """One row per arm: seeds, matched steps, examples, FLOPs per step and in all, workdirs, status."""
  d = resolved.definition
  rows = [["arm", "seeds", "steps", "examples", "FLOPs/step", "total FLOPs", "trainable params", "workdir",
           "status"]]
  for name, arm in resolved.arms.items():
    seeds = ",".join(map(str, resolved.seeds))
    status = sorted({statuses[(name, s)] for s in resolved.seeds})
    rows.append([name, seeds, str(arm.total_steps), str(arm.examples), number(arm.cost.flops_per_step),
                 number(arm.total_flops), f"{params_text(arm.cost.trainable_params)} of "
                 f"{params_text(arm.cost.params)}", os.path.join(workdir, name, "seed{" + seeds + "}"),
                 status[0] if len(status) == 1 else "; ".join(f"seed{s} {statuses[(name, s)]}" for s in resolved.seeds)])
  if any(a.cost.seconds_per_step for a in resolved.arms.values()):  # budget match="seconds"
    rows[0].insert(4, "s/step")
    for row, arm in zip(rows[1:], resolved.arms.values()):
      row.insert(4, number(arm.cost.seconds_per_step))
  lines = [f"suite {resolved.path}: {len(resolved.arms)} arms x {len(resolved.seeds)} seeds = "
           f"{len(resolved.arms) * len(resolved.seeds)} runs; budget {budget_text(budget_summary(resolved))}",
           _columns(rows)]
  lines += [f"note: {name}: objective(s) {list(a.cost.uncounted_objectives)} run model passes of their own that "
            "no model's FLOP count includes" for name, a in resolved.arms.items() if a.cost.uncounted_objectives]
  named = [name + (f" (arms {', '.join(s['arms'])})" if "arms" in s else "") for name, s in d["evals"].items()]
  lines.append(f"evaluations, every arm unless named, at {d['eval_points']} points of each run (the last at "
               f"its end): {', '.join(named) or 'none'}")
  return "\n".join(lines)


def run_command_args(workdir: str, arm: str, seed: int) -> list[str]:
  """The trainer arguments of one run: its recipe (the run's config rebuilt from suite.json) and workdir."""
  return ["--config", f"{RUN_RECIPE}:workdir={workdir},arm={arm},seed={seed}",
          "--workdir", suite_lib.run_dir(workdir, arm, seed)]


def slurm_plan(resolved: ResolvedSuite, workdir: str, pending: list[tuple[str, int]],
               launch_args: list[str]) -> tuple[str, dict[str, str]]:
  """(the text to print, {file name in DIR: its content}) for a job array of the pending runs."""
  tasks = "".join(shlex.join(run_command_args(workdir, arm, seed)) + "\n" for arm, seed in pending)
  task_list = os.path.join(workdir, TASK_LIST)
  lines = [f"# {len(pending)} run(s) not finished, as one SLURM job array (task i runs line i of {task_list});",
           "# sbatch options before launch/slurm.sh (--nodes, --gres, --time) apply to every task:",
           shlex.join(["sbatch", f"--array=0-{len(pending) - 1}", "launch/slurm.sh", "--task-list", task_list,
                       *launch_args]),
           f"# {task_list}:", *(f"#   {line}" for line in tasks.splitlines())]
  return "\n".join(lines + [_then(resolved, workdir)]), {TASK_LIST: tasks}


def tpu_pod_plan(resolved: ResolvedSuite, workdir: str, pending: list[tuple[str, int]],
                 launch_args: list[str]) -> tuple[str, dict[str, str]]:
  """(the text to print, {}) for one TPU slice per pending run."""
  if not workdir.startswith("gs://"):
    raise ValueError(f"--plan tpu_pod: --workdir {workdir!r} is not on GCS; valid: gs://BUCKET/DIR (every worker "
                     "of every slice writes there, and it outlives the VMs)")
  if "--zone" not in launch_args:
    raise ValueError("--plan tpu_pod: --launch_args must give launch/tpu_pod.sh its --zone (e.g. "
                     "--launch_args='--zone us-central2-b --accelerator-type v5p-64')")
  if "--name" in launch_args:
    raise ValueError("--plan tpu_pod: --launch_args may not set --name: the plan names each run's slice")
  stem = os.path.splitext(os.path.basename(suite_lib.split_suite(resolved.path)[0]))[0]
  lines = [f"# {len(pending)} run(s) not finished, one TPU slice each (add --detach to start them all at once):"]
  for arm, seed in pending:
    name = re.sub(r"[^a-z0-9-]+", "-", f"vljax-{stem}-{arm}-s{seed}".lower()).strip("-")[:63]
    lines.append(shlex.join(["launch/tpu_pod.sh", "--name", name, *run_command_args(workdir, arm, seed),
                             *launch_args]))
  return "\n".join(lines + [_then(resolved, workdir)]), {}


def _then(resolved: ResolvedSuite, workdir: str) -> str:
  return ("# then, wherever the workdir is visible, the evaluations still missing and the report:\n"
          + shlex.join(["python", "-m", "vljax.compare", "--suite", resolved.path, "--workdir", workdir]))


def plan(kind: str, resolved: ResolvedSuite, workdir: str, pending: list[tuple[str, int]],
         launch_args: list[str]) -> tuple[str, dict[str, Any]]:
  if kind not in PLANS:
    raise ValueError(f"--plan {kind!r} is unknown; valid: {list(PLANS)}")
  if not pending:
    return f"# every run of {resolved.path} is finished\n" + _then(resolved, workdir), {}
  return (slurm_plan if kind == "slurm" else tpu_pod_plan)(resolved, workdir, pending, launch_args)
