"""Two processes (gloo collectives, 2 CPU devices each) train clip_shapes.py like one process with 4."""

import os
import socket
import subprocess
import sys

import pytest

from vljax.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Evaluations only at the end, on few examples; checkpoints written by both processes mid-run.
OVERRIDES = ["--config.total_steps=20", "--config.log_every=1", "--config.progress_bar=False",
             "--config.checkpoint.every=10"]
OVERRIDES += [f"--config.evals.{e}.{k}" for e in ("zeroshot", "retrieval", "binding")
              for k in ("every=0", "num_examples=64")]
# The two runs add gradients in different orders (gloo's all-reduce vs one process's), which
# changes the last bit. Adam divides by sqrt(v) + eps: at eps=1e-6 a parameter whose gradient is
# ~1e-9 takes a full step in the direction of that last bit, and a few such steps make the runs
# drift apart (rel. 1e-7 up to step 13, 2.7e-5 by step 19). eps=1e-3 keeps the comparison about
# the distributed plumbing.
OVERRIDES += ["--config.optimizer.eps=1e-3"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _train(workdir, devices: int, extra=()):
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices),
             JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
  cmd = [sys.executable, "-m", "vljax.train", "--config", "configs/clip_shapes.py", "--workdir", str(workdir),
         *OVERRIDES, *extra]
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  return proc


@pytest.mark.slow
def test_two_processes_log_the_same_losses_as_one(tmp_path):
  port = _free_port()
  procs = [_train(tmp_path / "two", 2, [f"--coordinator_address=localhost:{port}", "--num_processes=2",
                                        f"--process_id={i}"]) for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  one = _train(tmp_path / "one", 4)
  out = one.communicate(timeout=600)[0]
  assert one.returncode == 0, out[-3000:]
  two, single = read_metrics(tmp_path / "two")["train/loss"], read_metrics(tmp_path / "one")["train/loss"]
  assert sorted(two) == sorted(single) == list(range(1, 21))
  for step in single:
    assert two[step] == pytest.approx(single[step], rel=1e-5), step
  assert sorted(os.listdir(tmp_path / "two" / "checkpoints")) == ["10", "20"]
