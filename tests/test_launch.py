"""launch/*.sh as a user runs them: --help, --dry-run (no SLURM, no gcloud needed), bad input fails
with a clear message, slurm.sh's XLA-flag check names an unknown flag (real jax, CPU), and the real
(non-dry) paths driven through stand-ins for srun / scontrol / gcloud that record their calls."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLURM, TPU, LOCAL = (os.path.join(ROOT, "launch", f) for f in ("slurm.sh", "tpu_pod.sh", "local.sh"))
BOGUS = "--xla_this_flag_does_not_exist=1"


def _env(**extra):
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("SLURM_", "XLA_", "NCCL_", "CUDA_DEVICE_MAX", "JAX_COORDINATOR", "JAX_LOCAL"))}
  env.update(JAX_PLATFORMS="cpu", **extra)
  return env


def _bash(script, *args, env=None):
  return subprocess.run(["bash", script, *args], cwd=ROOT, env=env or _env(), capture_output=True,
                        text=True, timeout=60)


def _stand_in(bin_dir, name, body):
  """An executable `name` in bin_dir that logs its argv (one line) to bin_dir/calls, then runs body."""
  path = bin_dir / name
  path.write_text(f'#!/usr/bin/env bash\necho "{name} $*" >> "{bin_dir}/calls"\n{body}\n')
  path.chmod(0o755)


@pytest.mark.parametrize("script", [LOCAL, SLURM, TPU])
def test_help(script):
  proc = _bash(script, "--help")
  assert proc.returncode == 0 and proc.stdout.startswith("usage:"), proc.stderr


def test_local_dry_run():
  proc = _bash(LOCAL, "--dry-run", "--cpu-devices", "8", "configs/clip_shapes.py", "runs/x", "--config.mesh.fsdp=8")
  assert proc.returncode == 0, proc.stderr
  assert "-m vljax.train --config configs/clip_shapes.py --workdir runs/x --config.mesh.fsdp=8" in proc.stdout
  assert "--xla_force_host_platform_device_count=8" in proc.stdout


# ---- slurm.sh ----------------------------------------------------------------------------------

def test_slurm_dry_run_one_process_per_gpu():
  proc = _bash(SLURM, "--dry-run", "--nodes-list", "gpu01,gpu02", "--config", "configs/clip_vit_b16.py",
               "--workdir", "/shared/runs/b16", "--config.batch_size=4096")
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout
  srun = next(line for line in out.splitlines() if line.startswith("srun "))
  assert "--nodes=2 --ntasks=16 --ntasks-per-node=8" in srun
  assert ("-m vljax.train --config configs/clip_vit_b16.py --workdir /shared/runs/b16 "
          "--config.batch_size=4096") in srun
  assert "export JAX_COORDINATOR_ADDRESS='gpu01:61440'" in out
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" in out and "NCCL_PROTO=" in out
  assert "JAX_LOCAL_DEVICE_IDS" not in out  # JAX gives each process GPU number SLURM_LOCALID
  assert "jax.devices()" in out  # the validation it would run


def test_slurm_dry_run_one_process_per_node_sees_all_gpus():
  proc = _bash(SLURM, "--dry-run", "--per-node", "--gpus-per-node", "4", "--nodes-list", "a,b,c",
               "--port", "9999", "--no-perf-flags", "--config", "c.py", "--workdir", "w")
  assert proc.returncode == 0, proc.stderr
  assert "--nodes=3 --ntasks=3 --ntasks-per-node=1" in proc.stdout
  assert "export JAX_LOCAL_DEVICE_IDS='0,1,2,3'" in proc.stdout
  assert "export JAX_COORDINATOR_ADDRESS='a:9999'" in proc.stdout
  assert "xla_gpu" not in proc.stdout and "NCCL_PROTO" not in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--workdir", "w"], "--config is required"),
    (["--config", "c.py"], "--workdir is required"),
    (["--config", "c.py", "--workdir", "w", "--bogus"], "unknown argument '--bogus'"),
    (["--config", "c.py", "--workdir", "w", "--port", "http"], "--port must be a positive integer"),
    (["--config", "c.py", "--workdir", "w"], "not inside a SLURM allocation"),
])
def test_slurm_bad_input_fails_clearly(args, message):
  proc = _bash(SLURM, *args)
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_slurm_recommended_xla_flags_are_known_to_this_jax():
  proc = _bash(SLURM, "--validate-only", "--python", sys.executable, "--config", "c.py")
  assert proc.returncode == 0, proc.stderr
  assert "XLA_FLAGS ok" in proc.stdout


def test_slurm_unknown_xla_flag_fails_fast_naming_it():
  proc = _bash(SLURM, "--validate-only", "--python", sys.executable, "--config", "c.py",
               env=_env(XLA_FLAGS=BOGUS))
  assert proc.returncode == 3
  assert f"Unknown flag in XLA_FLAGS: {BOGUS}" in proc.stderr


def test_slurm_job_validates_then_sruns_with_the_environment(tmp_path):
  # The real (non-dry) path inside an allocation, with stand-ins for scontrol and srun.
  _stand_in(tmp_path, "scontrol", "printf 'gpu07\\ngpu08\\n'")
  _stand_in(tmp_path, "srun", 'echo "XLA_FLAGS=$XLA_FLAGS" > "$(dirname "$0")/srun_env"; '
                              'echo "JAX_COORDINATOR_ADDRESS=$JAX_COORDINATOR_ADDRESS" >> "$(dirname "$0")/srun_env"')
  env = _env(PATH=f"{tmp_path}:{os.environ['PATH']}", SLURM_JOB_ID="4097", SLURM_JOB_NODELIST="gpu[07-08]",
             SLURM_GPUS_ON_NODE="8", SLURM_CPUS_ON_NODE="128", XLA_FLAGS="--xla_dump_to=/tmp/hlo")
  proc = _bash(SLURM, "--python", sys.executable, "--config", "configs/clip_vit_b16.py", "--workdir", "/shared/w",
               env=env)
  assert proc.returncode == 0, proc.stderr
  assert "XLA_FLAGS ok" in proc.stdout
  calls = (tmp_path / "calls").read_text().splitlines()
  assert calls[0] == "scontrol show hostnames gpu[07-08]"
  assert calls[1].startswith("srun --nodes=2 --ntasks=16 --ntasks-per-node=8 --cpus-per-task=16 --kill-on-bad-exit=1 ")
  assert calls[1].endswith("-m vljax.train --config configs/clip_vit_b16.py --workdir /shared/w")
  srun_env = (tmp_path / "srun_env").read_text()
  assert "JAX_COORDINATOR_ADDRESS=gpu07:61441" in srun_env
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" in srun_env
  assert srun_env.split("\n")[0].endswith(" --xla_dump_to=/tmp/hlo")  # the user's flags last: they win


def test_slurm_job_with_bad_flag_never_sruns(tmp_path):
  _stand_in(tmp_path, "scontrol", "echo gpu07")
  _stand_in(tmp_path, "srun", "")
  env = _env(PATH=f"{tmp_path}:{os.environ['PATH']}", SLURM_JOB_ID="1", SLURM_JOB_NODELIST="gpu07",
             XLA_FLAGS=BOGUS)
  proc = _bash(SLURM, "--python", sys.executable, "--config", "c.py", "--workdir", "w", env=env)
  assert proc.returncode == 3 and BOGUS in proc.stderr
  assert not any(c.startswith("srun") for c in (tmp_path / "calls").read_text().splitlines())


# ---- tpu_pod.sh --------------------------------------------------------------------------------

TPU_ARGS = ["--name", "vl-pod", "--zone", "us-central2-b", "--config", "configs/clip_vit_b16.py",
            "--workdir", "gs://my-bucket/runs/b16", "--config.batch_size=4096"]


def test_tpu_dry_run_prints_every_gcloud_command_and_runs_none(tmp_path):
  _stand_in(tmp_path, "gcloud", "exit 1")  # must never be called
  proc = _bash(TPU, "--dry-run", "--accelerator-type", "v5p-64", *TPU_ARGS,
               env=_env(PATH=f"{tmp_path}:{os.environ['PATH']}"))
  assert proc.returncode == 0, proc.stderr
  assert not (tmp_path / "calls").exists()
  out = proc.stdout
  assert "gcloud compute tpus tpu-vm describe vl-pod" in out
  assert ("gcloud compute tpus tpu-vm create vl-pod --accelerator-type=v5p-64 --version=v2-alpha-tpuv5 "
          "--zone=us-central2-b") in out
  assert "gcloud compute tpus tpu-vm scp" in out and "vl-pod:vljax-code.tgz --worker=all" in out
  assert '"jax[tpu]==0.10.2"' in out  # the jax pinned in requirements.txt
  ssh = [line for line in out.splitlines() if line.startswith("gcloud compute tpus tpu-vm ssh vl-pod --worker=all")]
  assert len(ssh) >= 2
  assert ("-m vljax.train --config configs/clip_vit_b16.py --workdir gs://my-bucket/runs/b16 "
          "--config.batch_size=4096") in out


@pytest.mark.parametrize("args, message", [
    (["--workdir", "/home/me/runs/b16"],
     "--workdir must be on a GCS bucket (gs://BUCKET/DIR), got '/home/me/runs/b16'"),
    (["--workdir", "gs://"], "--workdir must be on a GCS bucket"),
])
def test_tpu_non_gcs_workdir_fails_clearly(args, message):
  proc = _bash(TPU, "--dry-run", "--name", "vl", "--zone", "z", "--config", "c.py", *args)
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr


@pytest.mark.parametrize("missing, message", [("--name", "--name is required"), ("--zone", "--zone is required"),
                                              ("--config", "--config is required")])
def test_tpu_missing_argument_fails_clearly(missing, message):
  args = list(TPU_ARGS)
  i = args.index(missing)
  del args[i:i + 2]
  proc = _bash(TPU, "--dry-run", *args)
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr


@pytest.mark.parametrize("state, creates", [(None, True), ("READY", False)])
def test_tpu_creates_or_reuses_then_runs_on_all_workers(tmp_path, state, creates):
  describe = f'echo {state}' if state else 'echo "NOT_FOUND" >&2; exit 1'
  _stand_in(tmp_path, "gcloud", f'if [[ "$4" == describe ]]; then {describe}; fi')
  proc = _bash(TPU, "--skip-setup", *TPU_ARGS, env=_env(PATH=f"{tmp_path}:{os.environ['PATH']}"))
  assert proc.returncode == 0, proc.stderr
  calls = (tmp_path / "calls").read_text().splitlines()
  assert calls[0].startswith("gcloud compute tpus tpu-vm describe vl-pod")
  assert any(c.startswith("gcloud compute tpus tpu-vm create vl-pod") for c in calls) == creates
  assert calls[-1].startswith("gcloud compute tpus tpu-vm ssh vl-pod --worker=all --command=cd vljax && "
                              ".venv/bin/python -m vljax.train")
  assert "--workdir gs://my-bucket/runs/b16" in calls[-1]
