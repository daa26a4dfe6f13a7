"""vljax.parallel.distributed.initialize: which arguments reach jax.distributed.initialize in each
launch environment (faked: no distributed runtime is started), single process untouched, partial
arguments rejected by name, idempotent."""

import os

import jax
import pytest

from vljax.parallel import distributed

_LAUNCHER_VARS = ("SLURM_", "OMPI_", "TPU_", "MEGASCALE_", "VLJAX_", "JAX_COORDINATOR", "JAX_LOCAL_DEVICE_IDS")


@pytest.fixture
def fake(monkeypatch):
  """A clean launcher environment and a recording jax.distributed.initialize."""
  for name in list(os.environ):
    if name.startswith(_LAUNCHER_VARS):
      monkeypatch.delenv(name)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  calls = []
  rank = {"index": 0, "count": 1}

  def initialize(**kwargs):
    calls.append(kwargs)
    rank["index"] = kwargs.get("process_id", int(os.environ.get("SLURM_PROCID", 0)))
    rank["count"] = kwargs.get("num_processes", int(os.environ.get("SLURM_NTASKS", 2)))

  monkeypatch.setattr(jax.distributed, "initialize", initialize)
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: bool(calls))
  monkeypatch.setattr(jax, "process_index", lambda: rank["index"])
  monkeypatch.setattr(jax, "process_count", lambda: rank["count"])
  distributed._reset_for_tests()
  yield calls
  distributed._reset_for_tests()


def test_single_process_initialises_nothing(fake):
  info = distributed.initialize()
  assert info == {"mode": "single", "process_index": 0, "process_count": 1, "coordinator": None}
  assert fake == []


@pytest.mark.parametrize("env", [
    {"SLURM_JOB_ID": "77", "SLURM_NTASKS": "16", "SLURM_PROCID": "0"},  # batch script, no srun step
    {"SLURM_JOB_ID": "77", "SLURM_STEP_NODELIST": "gpu01", "SLURM_NTASKS": "1"},  # srun -n 1
    {"VLJAX_COORDINATOR": "h0:1234", "VLJAX_NUM_PROCESSES": "1", "VLJAX_PROCESS_ID": "0"},
    {"TPU_WORKER_HOSTNAMES": "h0"},  # one TPU host
])
def test_one_process_environments_are_single(fake, monkeypatch, env):
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  assert distributed.initialize()["mode"] == "single"
  assert fake == []


def test_explicit_arguments_are_passed_and_win_over_environment(fake, monkeypatch):
  monkeypatch.setenv("SLURM_JOB_ID", "77")
  monkeypatch.setenv("SLURM_STEP_NODELIST", "gpu[01-02]")
  monkeypatch.setenv("SLURM_NTASKS", "16")
  monkeypatch.setenv("VLJAX_COORDINATOR", "other:1")
  info = distributed.initialize("10.0.0.1:1234", 4, 2, local_device_ids=[0, 1])
  assert fake == [dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=2,
                       local_device_ids=[0, 1])]
  assert info == {"mode": "explicit", "process_index": 2, "process_count": 4, "coordinator": "10.0.0.1:1234"}


@pytest.mark.parametrize("args, missing", [
    (dict(coordinator_address="h:1"), "num_processes, process_id missing"),
    (dict(num_processes=4, process_id=0), "coordinator_address missing"),
    (dict(coordinator_address="h:1", num_processes=4), "process_id missing"),
])
def test_partial_explicit_arguments_raise_naming_the_missing(fake, args, missing):
  with pytest.raises(ValueError, match=missing):
    distributed.initialize(**args)
  assert fake == []


def test_out_of_range_process_id_raises(fake):
  with pytest.raises(ValueError, match=r"process_id=4 must be in \[0, num_processes=4\)"):
    distributed.initialize("h:1", 4, 4)


def test_env_trio_is_passed_as_integers_and_wins_over_slurm(fake, monkeypatch):
  monkeypatch.setenv("SLURM_JOB_ID", "77")
  monkeypatch.setenv("SLURM_STEP_NODELIST", "gpu01")
  monkeypatch.setenv("SLURM_NTASKS", "16")
  monkeypatch.setenv("VLJAX_COORDINATOR", "host0:8476")
  monkeypatch.setenv("VLJAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("VLJAX_PROCESS_ID", "1")
  info = distributed.initialize()
  assert fake == [dict(coordinator_address="host0:8476", num_processes=2, process_id=1)]
  assert info == {"mode": "env", "process_index": 1, "process_count": 2, "coordinator": "host0:8476"}


@pytest.mark.parametrize("env, message", [
    ({"VLJAX_COORDINATOR": "h:1"}, "VLJAX_NUM_PROCESSES, VLJAX_PROCESS_ID missing"),
    ({"VLJAX_NUM_PROCESSES": "2", "VLJAX_PROCESS_ID": "0"}, "VLJAX_COORDINATOR missing"),
    ({"VLJAX_COORDINATOR": "h:1", "VLJAX_NUM_PROCESSES": "two", "VLJAX_PROCESS_ID": "0"},
     "VLJAX_NUM_PROCESSES='two' is not an integer"),
])
def test_bad_env_trio_raises_naming_the_variable(fake, monkeypatch, env, message):
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  with pytest.raises(ValueError, match=message):
    distributed.initialize()
  assert fake == []


def test_slurm_step_lets_jax_detect_everything(fake, monkeypatch):
  monkeypatch.setenv("SLURM_JOB_ID", "77")
  monkeypatch.setenv("SLURM_STEP_NODELIST", "gpu[01-02]")
  monkeypatch.setenv("SLURM_NTASKS", "16")
  monkeypatch.setenv("SLURM_PROCID", "9")
  info = distributed.initialize()
  assert fake == [{}]  # no coordinator / count / id: JAX's SLURM cluster detection fills them
  assert info == {"mode": "slurm", "process_index": 9, "process_count": 16, "coordinator": None}


def test_slurm_one_process_per_node_passes_local_devices(fake, monkeypatch):
  monkeypatch.setenv("SLURM_JOB_ID", "77")
  monkeypatch.setenv("SLURM_STEP_NODELIST", "gpu[01-02]")
  monkeypatch.setenv("SLURM_NTASKS", "2")
  distributed.initialize(local_device_ids=range(8))
  assert fake == [{"local_device_ids": range(8)}]


def test_jax_reads_the_srun_environment_the_way_we_rely_on(fake, monkeypatch):
  # Not a fake: JAX's own (pure, environment-reading) SLURM detection, as jax.distributed.initialize()
  # runs it inside an srun step. Guards the "slurm" mode and launch/slurm.sh against a JAX change.
  from jax._src import clusters
  for k, v in {"SLURM_JOB_ID": "4096", "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_NTASKS": "16",
               "SLURM_PROCID": "9", "SLURM_LOCALID": "1"}.items():
    monkeypatch.setenv(k, v)
  monkeypatch.delenv("JAX_COORDINATOR_PORT", raising=False)
  addr, count, pid, local = clusters.ClusterEnv.auto_detect_unset_distributed_params(
      None, None, None, None, None, 1)
  assert (addr.split(":")[0], count, pid, local) == ("gpu07", 16, 9, [1])


def test_open_mpi_lets_jax_detect(fake, monkeypatch):
  monkeypatch.setenv("OMPI_MCA_orte_hnp_uri", "1531576320.0;tcp://10.0.0.1:34911")
  monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
  assert distributed.initialize()["mode"] == "ompi"
  assert fake == [{}]


def test_tpu_pod_lets_jax_detect(fake, monkeypatch):
  monkeypatch.delenv("JAX_PLATFORMS")
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t1v-0,t1v-1,t1v-2,t1v-3")
  assert distributed.initialize()["mode"] == "tpu"
  assert fake == [{}]


def test_cloud_tpu_vm_lets_jax_detect_unless_platform_excludes_tpu(fake, monkeypatch):
  from jax._src import cloud_tpu_init
  monkeypatch.setattr(cloud_tpu_init, "running_in_cloud_tpu_vm", True)
  assert distributed.initialize()["mode"] == "single"  # JAX_PLATFORMS=cpu (fixture)
  distributed._reset_for_tests()
  monkeypatch.delenv("JAX_PLATFORMS")
  assert distributed.initialize()["mode"] == "tpu"
  assert fake == [{}]


def test_idempotent(fake, monkeypatch):
  monkeypatch.setenv("VLJAX_COORDINATOR", "host0:8476")
  monkeypatch.setenv("VLJAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("VLJAX_PROCESS_ID", "0")
  first = distributed.initialize()
  monkeypatch.setenv("VLJAX_PROCESS_ID", "1")  # ignored: already initialised
  assert distributed.initialize() == first
  assert distributed.initialize("other:1", 8, 3) == first
  assert len(fake) == 1


def test_initialised_elsewhere_is_not_reinitialised(fake, monkeypatch):
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
  monkeypatch.setenv("VLJAX_COORDINATOR", "host0:8476")
  monkeypatch.setenv("VLJAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("VLJAX_PROCESS_ID", "0")
  assert distributed.initialize()["mode"] == "external"
  assert fake == []
