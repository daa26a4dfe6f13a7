"""Two processes (gloo collectives, 2 CPU devices each) train clip_shapes.py like one process with 4.

The first step is compared directly, loss and gradients, against the float32 rounding bound of the
one thing the two layouts do differently: the order in which they add the batch's examples. Later
steps run the same programs on their own last bits, which Adam amplifies; no multi-step loss
comparison is made, since its tolerance could only be fitted to the CPUs it was measured on. The
plumbing of a whole two-process run (both log, agree on a stop step, save, resume bit for bit) is
the SIGTERM test's.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import numerics
from vljax import config as config_lib
from vljax.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# clip_shapes.py with tiny towers and images: every run here compiles in seconds. The first-step bound
# holds for any model (it is derived from the reduction, not fitted), so tiny towers lose nothing there.
TINY_TOWERS = {"model.image.variant": "mu/8", "model.text.variant": "mu", "model.contrastive.embed_dim": 16,
               "data.image_size": 32, "data.max_len": 12}
TINY_MODEL = [f"--config.{k}={v}" for k, v in TINY_TOWERS.items()]
TINY_MODEL += ["--config.batch_size=16", "--config.eval_batch_size=32"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(devices: int, program: list[str]) -> subprocess.Popen:
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices),
             JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
  return subprocess.Popen([sys.executable, *program], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _two_processes_and_one(program: list[str], two: list[str], one: list[str]) -> None:
  """`program` + `two` as 2 processes x 2 devices and, at the same time, `program` + `one` as 1
  process x 4 devices."""
  port = _free_port()
  procs = [_start(2, [*program, *two, f"--coordinator_address=localhost:{port}", "--num_processes=2",
                      f"--process_id={i}"]) for i in range(2)]
  procs.append(_start(4, [*program, *one]))
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]


FIRST_STEP = ["tests/first_step.py", "--config", "configs/clip_shapes.py", "--config.batch_size=64",
              *(f"--config.{k}={v}" for k, v in TINY_TOWERS.items())]


def _first_step_config():
  """The config FIRST_STEP runs (what the per-example gradient terms are computed with)."""
  cfg = config_lib.load_config("configs/clip_shapes.py")
  cfg.batch_size = 64
  for key, value in TINY_TOWERS.items():
    *parents, leaf = key.split(".")
    node = cfg
    for name in parents:
      node = node[name]
    node[leaf] = value
  return cfg


@pytest.mark.slow
@pytest.mark.cross_path
def test_first_step_loss_and_gradients_of_two_processes_are_one_within_float32_reordering(tmp_path):
  """Both layouts see the same 64 examples, process p holding examples p::2 (a permutation of one
  process's batch), and run the same per-device program, so they differ only in the order their
  sums over the batch add the examples. Two float32 sums of the same n terms differ by at most
  2 gamma_{n-1} sum|terms| (tests/numerics.py), which bounds:
  - the loss, by numerics.contrastive_loss_bound (terms: the 2B cross-entropies, each >= 0, and
    each row's log-sum-exp);
  - every gradient tensor, by 2 gamma_{B-1} max_e sum_i |dL/dparam_e through example i|, from the
    per-example terms computed here (per tensor, not per element: see
    numerics.assert_first_steps_within_reordering).
  Neither bound was fitted to a CPU: both hold for any order of additions, any instruction set."""
  _two_processes_and_one(FIRST_STEP, ["--out", str(tmp_path / "two.npz")], ["--out", str(tmp_path / "one.npz")])
  two, one = np.load(tmp_path / "two.npz"), np.load(tmp_path / "one.npz")
  rows = lambda a: sorted(map(bytes, a.reshape(len(a), -1).view(np.uint8)))  # noqa: E731
  for key in ("batch/image", "batch/text"):
    assert rows(two[key]) == rows(one[key]), key  # the same examples, in another order
  for key in (k for k in one.files if k.startswith("param/")):
    np.testing.assert_array_equal(two[key], one[key], err_msg=key)  # the same initial params

  numerics.assert_first_steps_within_reordering(dict(two), dict(one),
                                                numerics.first_step_gradient_terms(_first_step_config(), one))


TINY = [*TINY_MODEL, "--config.schedule.name=warmup_constant", "--config.schedule.warmup_steps=2", "--config.log_every=1",
        "--config.checkpoint.every=0", "--config.progress_bar=False"]
TINY += [f"--config.evals.{e}.{k}" for e in ("zeroshot", "retrieval", "binding") for k in ("every=0", "num_examples=32")]


def _two_processes(workdir, *extra) -> list[subprocess.Popen]:
  port = _free_port()
  return [_start(1, ["-m", "vljax.train", "--config", "configs/clip_shapes.py", "--workdir", str(workdir), *TINY,
                     *extra, f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"])
          for i in range(2)]


def _finish(procs) -> list[str]:
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  return outputs


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(tmp_path):
  """SIGTERM reaches one host: both processes agree on a step, save it, exit 0; the rerun goes on
  bit for bit like a run that was never stopped."""
  stopped = tmp_path / "stopped"
  procs = _two_processes(stopped, "--config.total_steps=100000")
  try:
    deadline = time.time() + 300
    while not (stopped / "metrics.jsonl").exists() or max(read_metrics(stopped).get("train/loss", {0: 0})) < 3:
      assert time.time() < deadline and all(p.poll() is None for p in procs), "the run did not reach step 3"
      time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)  # process 0 hears nothing
    outputs = _finish(procs)
  finally:
    for p in procs:  # a failed test must not leave a 100000-step run behind
      if p.poll() is None:
        p.kill()
  steps = [re.findall(r"stopped at step (\d+) after SIGTERM", out) for out in outputs]
  assert steps[0] == steps[1] and len(steps[0]) == 1, steps
  assert "preemption notice" in outputs[0], outputs[0][-3000:]  # process 0 learned it from process 1
  step = int(steps[0][0])
  assert os.listdir(stopped / "checkpoints") == [str(step)]

  end = step + 3
  reference = _two_processes(tmp_path / "reference", f"--config.total_steps={end}")
  rerun = _two_processes(stopped, f"--config.total_steps={end}")
  _finish(reference + rerun)
  want, got = read_metrics(tmp_path / "reference")["train/loss"], read_metrics(stopped)["train/loss"]
  assert sorted(got) == list(range(1, end + 1))
  assert got == want  # bit for bit
