"""`python -m vljax.compare --suite configs/compare/NAME.py[:ARG] --workdir DIR [--dry_run] [--plan slurm|tpu_pod]
[--launch_args '...'] [--report_only]`

Trains every arm x seed of the suite at matched compute, one run after another, each an ordinary
workdir DIR/<arm>/seed<k>; evaluates them all with the suite's evaluators; writes DIR/report.md,
DIR/report.json and DIR/plots/. Rerun it to resume: finished runs are skipped, unfinished ones
resume from their checkpoints. --dry_run prints the runs and writes nothing; --plan prints the
commands that run them on a cluster instead (and writes DIR/suite.json and the task list they read).
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import shutil
import sys
import tempfile
from collections.abc import Sequence

from vljax import metrics as metrics_lib
from vljax.compare import launch, record, report, resolve, runs
from vljax.compare import suite as suite_lib


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m vljax.compare", description=__doc__.split("\n\n")[1])
  parser.add_argument("--suite", required=True, help="suite file and its argument, e.g. configs/compare/"
                      "shapes_objectives.py or configs/compare/vit_b16_objectives.py:scale=small,train=...")
  parser.add_argument("--workdir", required=True, help="comparison directory: suite.json, <arm>/seed<k>/, report")
  parser.add_argument("--dry_run", action="store_true", help="print the runs (and --plan's commands); write nothing")
  parser.add_argument("--plan", choices=launch.PLANS, help="print the cluster commands instead of running here")
  parser.add_argument("--launch_args", default="", help="more arguments for launch/slurm.sh or launch/tpu_pod.sh")
  parser.add_argument("--report_only", action="store_true", help="only (re)write the report from the runs there")
  return parser.parse_args(argv)


@contextlib.contextmanager
def shared_compilation_cache():
  """The seeds of an arm compile the same programs: one XLA cache for this command, removed at its end
  (never reused by another process, which might run on another CPU), unless one is configured."""
  import jax

  if jax.config.jax_compilation_cache_dir:
    yield
    return
  directory = tempfile.mkdtemp(prefix="vljax-compare-xla-")
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  try:
    yield
  finally:
    shutil.rmtree(directory, ignore_errors=True)


def statuses(resolved: resolve.ResolvedSuite, workdir: str) -> dict[tuple[str, int], runs.RunStatus]:
  return {(arm, seed): runs.run_status(resolved, workdir, arm, seed) for arm, seed in suite_lib.runs(resolved.definition)}


def write_report(resolved: resolve.ResolvedSuite, workdir: str) -> None:
  described = {key: s.describe() for key, s in statuses(resolved, workdir).items()}
  paths = report.write_report(resolved, workdir, described)
  print(f"report: {paths['md']} (numbers: {paths['json']}; figures: {workdir}/plots/)")


def run(args: argparse.Namespace) -> int:
  workdir = record.absolute(args.workdir) if args.plan else args.workdir
  resolved = resolve.resolve(args.suite, build_evaluators=not args.report_only, workdir=workdir)
  recorded = record.check(workdir, resolved.record())
  if args.report_only:
    if not recorded:
      raise ValueError(f"--report_only: {workdir!r} holds no {record.RECORD}; run the suite there first")
    write_report(resolved, workdir)
    return 0
  now = statuses(resolved, workdir) if recorded else {}
  described = {key: now[key].describe() if key in now else "new" for key in suite_lib.runs(resolved.definition)}
  if args.dry_run or args.plan:
    print(launch.dry_run_table(resolved, workdir, described))
  if args.plan:
    pending = [key for key in suite_lib.runs(resolved.definition) if key not in now or not now[key].trained]
    text, files = launch.plan(args.plan, resolved, workdir, pending, shlex.split(args.launch_args))
    print(text)
    if not args.dry_run:
      if not recorded:
        record.write(workdir, resolved.record())
      for name, content in files.items():
        print(f"wrote {metrics_lib.write_text(workdir, name, content)}")
  if args.dry_run or args.plan:
    return 0
  if not recorded:
    record.write(workdir, resolved.record())
  with shared_compilation_cache():
    runs.run_all(resolved, workdir)
  write_report(resolved, workdir)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  from absl import logging  # the trainer's warnings stay; Orbax's INFO chatter would drown the runs' lines

  logging.set_verbosity(logging.WARNING)
  try:
    return run(args)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except runs.Stopped as e:
    print(f"stopped: {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
  sys.exit(main())
