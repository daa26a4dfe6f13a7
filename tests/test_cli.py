"""`python -m vljax.train` as a user runs it: bad input exits non-zero with a clear message;
SIGKILL + rerun reproduces the uninterrupted run bitwise; SIGTERM checkpoints and exits cleanly."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import workdir_listing
from vljax.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.model.image.variant=mu/8", "--config.model.text.variant=mu", "--config.model.contrastive.embed_dim=16",
        "--config.data.image_size=32", "--config.data.max_len=12", "--config.batch_size=16",
        "--config.total_steps=12", "--config.checkpoint.every=2", "--config.log_every=1",
        "--config.schedule.warmup_steps=2", "--config.progress_bar=False", "--config.eval_batch_size=32",
        "--config.evals.zeroshot.every=6", "--config.evals.zeroshot.num_examples=32",
        "--config.evals.retrieval.every=6", "--config.evals.retrieval.num_examples=32",
        "--config.evals.binding.every=6", "--config.evals.binding.num_examples=32"]


def _cmd(workdir, *extra, config="configs/clip_shapes.py"):
  return [sys.executable, "-m", "vljax.train", "--config", config, "--workdir", str(workdir), *extra]


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  return env


def _run(*args, **kw):
  return subprocess.run(_cmd(*args, **kw), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("flag, message", [
    ("--config.no_such_key=1", "no_such_key"),
    ("--config.model.name=perceiver", "perceiver"),
    ("--config.objectives.triplet=1.0", "triplet"),
    ("--config.loss_impl=ring", "config.loss_impl='ring' is invalid; valid: one of ['gather', 'shard_map']"),
])
def test_bad_flags_exit_nonzero_naming_the_value(tmp_path, flag, message):
  proc = _run(tmp_path / "w", *TINY, flag)
  assert proc.returncode != 0
  assert message in proc.stderr
  assert workdir_listing(tmp_path / "w") is None  # no file or directory: absl and Orbax included


def test_a_bad_value_leaves_an_existing_workdir_as_it_was(tmp_path):
  (tmp_path / "w" / "notes").mkdir(parents=True)
  (tmp_path / "w" / "notes" / "plan.txt").write_text("clip sweep")
  before = workdir_listing(tmp_path / "w")
  proc = _run(tmp_path / "w", *TINY, "--config.optimizer.grad_clip_norm=-1")
  assert proc.returncode == 2
  assert "config.optimizer.grad_clip_norm=-1.0 is invalid; valid: a number > 0, or 0 for no clipping" in proc.stderr
  assert workdir_listing(tmp_path / "w") == before


def _wait_for_step(workdir, step, proc, timeout=300):
  path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + timeout
  while time.time() < deadline:
    assert proc.poll() is None, proc.communicate()
    if os.path.exists(path):
      with open(path) as f:
        steps = [json.loads(line)["step"] for line in f if line.strip()]
      if steps and max(steps) >= step:
        return
    time.sleep(0.05)
  raise TimeoutError(f"step {step} not reached")


@pytest.mark.slow
def test_sigkill_then_rerun_is_bitwise_identical(tmp_path):
  full, killed = tmp_path / "full", tmp_path / "killed"
  assert _run(full, *TINY).returncode == 0
  proc = subprocess.Popen(_cmd(killed, *TINY), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  _wait_for_step(killed, 7, proc)  # between checkpoints (every 2), possibly mid-save
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  rerun = _run(killed, *TINY)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  a, b = read_metrics(full), read_metrics(killed)
  assert b["train/loss"] == a["train/loss"]
  with open(full / "final_metrics.json") as fa, open(killed / "final_metrics.json") as fb:
    assert json.load(fa) == json.load(fb)


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_cleanly(tmp_path):
  workdir = tmp_path / "w"
  proc = subprocess.Popen(_cmd(workdir, *TINY, "--config.total_steps=100000", "--config.checkpoint.every=0"),
                          cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  _wait_for_step(workdir, 3, proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-3000:]
  saved = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
  last_logged = max(read_metrics(workdir)["train/loss"])
  assert saved == [last_logged] and last_logged >= 3
