"""The runs of a suite, one after another on this machine: each an ordinary workdir trained by the
trainer (which resumes from its latest checkpoint), skipped once finished, its missing evaluations
filled in through vljax.evaluate.

A run is finished when it has its checkpoint at total_steps and every suite evaluator's rows at
every checkpoint step the suite evaluates (1/eval_points of the run apart, and the last). The
trainer evaluates those steps as it goes; an evaluation lost to an interruption after its
checkpoint (saved first) is redone from that checkpoint, and none already present is recomputed.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

from absl import logging
from etils import epath

from vljax import checkpoint_io
from vljax import metrics as metrics_lib
from vljax.compare import suite as suite_lib
from vljax.compare.resolve import ResolvedSuite


@contextlib.contextmanager
def _quiet_orbax():
  """Listing a run's checkpoints opens a read-only Orbax manager, which warns that it is read-only."""
  level = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    yield
  finally:
    logging.set_verbosity(level)


class Stopped(Exception):
  """A run stopped before its end (SIGTERM / preemption): the suite stops too, to resume later."""


@dataclasses.dataclass(frozen=True)
class RunStatus:
  arm: str
  seed: int
  workdir: str
  total_steps: int
  checkpoints: tuple[int, ...]
  missing: dict[int, list[str]]  # evaluated step -> suite evaluators without rows there

  @property
  def trained(self) -> bool:
    return self.total_steps in self.checkpoints

  @property
  def finished(self) -> bool:
    return self.trained and not self.missing

  def describe(self) -> str:
    if self.finished:
      return "done"
    if self.trained:
      return f"trained; evaluations missing at steps {sorted(self.missing)}"
    if self.checkpoints:
      return f"at step {self.checkpoints[-1]} of {self.total_steps}"
    return "started, no checkpoint" if (epath.Path(self.workdir) / "metrics.jsonl").exists() else "new"


def run_status(resolved: ResolvedSuite, workdir: str, arm: str, seed: int) -> RunStatus:
  path = suite_lib.run_dir(workdir, arm, seed)
  total = resolved.arms[arm].total_steps
  every = suite_lib.eval_interval(total, resolved.definition["eval_points"])
  with _quiet_orbax():
    checkpoints = tuple(checkpoint_io.checkpoint_steps(path))
  series = metrics_lib.read_metrics(path)
  evaluated: dict[str, set[int]] = {}
  for key, values in series.items():
    if key.startswith("eval/"):
      evaluated.setdefault(key.split("/")[1], set()).update(values)
  missing = {}
  for step in checkpoints:
    if step == total or step % every == 0:
      lacking = [n for n in suite_lib.arm_evals(resolved.definition, arm) if step not in evaluated.get(n, ())]
      if lacking:
        missing[step] = lacking
  return RunStatus(arm, seed, path, total, checkpoints, missing)


def run_all(resolved: ResolvedSuite, workdir: str, log: Callable[[str], None] = print) -> list[RunStatus]:
  """Every run trained and evaluated, in the suite's order; raises Stopped if one stops early."""
  out = []
  for arm, seed in suite_lib.runs(resolved.definition):
    status = run_status(resolved, workdir, arm, seed)
    name = f"{arm}/seed{seed}"
    if status.finished:
      log(f"{name}: done ({status.total_steps} steps); skipped")
      out.append(status)
      continue
    if not status.trained:
      log(f"{name}: {status.describe()}; training to step {status.total_steps}")
      train(resolved, arm, seed, status.workdir)
      status = run_status(resolved, workdir, arm, seed)
      if not status.trained:
        raise Stopped(f"{name} stopped at step {max(status.checkpoints, default=0)} of {status.total_steps}; "
                      "rerun the same command to resume")
    fill_evaluations(status, log)
    out.append(run_status(resolved, workdir, arm, seed))
  return out


def train(resolved: ResolvedSuite, arm: str, seed: int, path: str) -> None:
  """What `python -m vljax.train --config configs/compare/run.py:... --workdir path` does."""
  from vljax.train import trainer  # lazy: the whole model and data stack, only when training

  final = trainer.train_and_evaluate(resolved.run_config(arm, seed), path)
  trainer.write_final_metrics(path, final)


def fill_evaluations(status: RunStatus, log: Callable[[str], None] = print) -> None:
  """The suite's evaluators missing at evaluated checkpoint steps, by vljax.evaluate."""
  from vljax import evaluate  # lazy, as the trainer

  for step, names in sorted(status.missing.items()):
    log(f"{status.arm}/seed{status.seed}: evaluating {names} at step {step}")
    evaluate.evaluate(status.workdir, names, step=step)
