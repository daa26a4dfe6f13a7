"""Multi-process start-up: call `jax.distributed.initialize` once when the run spans processes.

    from vljax.parallel import distributed
    info = distributed.initialize()   # FIRST, before jax.devices(), a mesh, or any computation
    logging.info("distributed: %s", info)

`jax.distributed.initialize` must run before anything initialises a JAX backend (jax.devices,
jax.device_put, any jitted call); afterwards JAX raises RuntimeError. So call `initialize()` at
the top of the entry point, before the config builds a mesh.

Who this process is, in order (the first that applies wins):

  explicit  `initialize(coordinator_address, num_processes, process_id)`: all three or none.
  env       VLJAX_COORDINATOR=host:port, VLJAX_NUM_PROCESSES, VLJAX_PROCESS_ID: all three or none
            (any launcher: a hand-written ssh loop, Kubernetes, a cluster without SLURM).
  ompi      launched by Open MPI's mpirun with more than one rank (JAX reads OMPI_* variables).
  slurm     inside an `srun` step with more than one task (SLURM_JOB_ID, SLURM_STEP_NODELIST,
            SLURM_NTASKS > 1). JAX's own SLURM detection reads the rest: process id from
            SLURM_PROCID, count from SLURM_NTASKS, coordinator = first node of the step on a port
            derived from the job id (JAX_COORDINATOR_ADDRESS / JAX_COORDINATOR_PORT override it),
            and one GPU per process (SLURM_LOCALID) unless JAX_LOCAL_DEVICE_IDS lists others.
            The batch script itself (no srun step) is one process, hence "single".
  tpu       a Cloud TPU VM (libtpu and TPU chips present), a GKE TPU pod (TPU_WORKER_HOSTNAMES /
            TPU_PROCESS_ADDRESSES) or multislice (MEGASCALE_COORDINATOR_ADDRESS): JAX asks the TPU
            environment / GCE metadata for the workers. A single-host TPU VM becomes a 1-process
            run. Skipped when JAX_PLATFORMS is set and does not name tpu.
  single    anything else: nothing is initialised.

In the auto-detected modes `jax.distributed.initialize()` is called with no coordinator, count or
id, so these follow JAX's own cluster detection (jax/_src/clusters) rather than a copy of it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

_ENV_TRIO = ("VLJAX_COORDINATOR", "VLJAX_NUM_PROCESSES", "VLJAX_PROCESS_ID")
_result: dict[str, Any] | None = None  # what the first call did; later calls return it


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids: int | Sequence[int] | None = None
               ) -> dict[str, Any]:
  """Initialises JAX's distributed runtime when this run has several processes; idempotent.

  Must be called before any JAX backend use (see the module docstring). `local_device_ids`
  restricts the devices this process drives (e.g. one GPU per process without SLURM); it is passed
  through in every multi-process mode and ignored for a single process.

  Returns {"mode": "single"|"explicit"|"env"|"slurm"|"ompi"|"tpu"|"external", "process_index",
  "process_count", "coordinator" (None where JAX chose it)}; a second call returns the same without
  re-initialising. "external" means someone called jax.distributed.initialize before us.
  Raises ValueError when only some of the coordinator / count / id values are given (arguments
  or VLJAX_* variables), naming the missing ones, or when they are out of range.
  """
  global _result
  if _result is not None:
    return dict(_result)
  if jax.distributed.is_initialized():
    _result = _describe("external", None)
    return dict(_result)

  mode, coordinator, count, pid = _plan(coordinator_address, num_processes, process_id)
  if mode == "single":
    _result = {"mode": "single", "process_index": 0, "process_count": 1, "coordinator": None}
    return dict(_result)

  kwargs: dict[str, Any] = {}
  if mode in ("explicit", "env"):
    kwargs = dict(coordinator_address=coordinator, num_processes=count, process_id=pid)
  if local_device_ids is not None:
    kwargs["local_device_ids"] = local_device_ids
  jax.distributed.initialize(**kwargs)
  _result = _describe(mode, coordinator)
  return dict(_result)


def _describe(mode: str, coordinator: str | None) -> dict[str, Any]:
  # The runtime is up, so asking JAX now starts the backend in the right order and reports what
  # JAX itself concluded (in the auto-detected modes we never saw the numbers).
  return {"mode": mode, "process_index": jax.process_index(), "process_count": jax.process_count(),
          "coordinator": coordinator}


def _plan(coordinator_address, num_processes, process_id) -> tuple[str, str | None, int | None, int | None]:
  """(mode, coordinator, num_processes, process_id); the last three only for explicit/env."""
  trio = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
  if any(v is not None for v in trio.values()):
    _require_all(trio, "initialize() needs coordinator_address, num_processes and process_id together")
    count, pid = _check_range(int(num_processes), int(process_id), "num_processes", "process_id")
    return ("explicit" if count > 1 else "single"), str(coordinator_address), count, pid

  env = {name: os.environ.get(name) or None for name in _ENV_TRIO}
  if any(v is not None for v in env.values()):
    _require_all(env, "set all of " + ", ".join(_ENV_TRIO) + " or none of them")
    count = _parse_int("VLJAX_NUM_PROCESSES", env["VLJAX_NUM_PROCESSES"])
    pid = _parse_int("VLJAX_PROCESS_ID", env["VLJAX_PROCESS_ID"])
    count, pid = _check_range(count, pid, "VLJAX_NUM_PROCESSES", "VLJAX_PROCESS_ID")
    return ("env" if count > 1 else "single"), env["VLJAX_COORDINATOR"], count, pid

  if _in_open_mpi():  # JAX's detection order: Open MPI, then SLURM, then TPU
    return "ompi", None, None, None
  if _in_slurm_step():
    return "slurm", None, None, None
  if _on_tpu_cluster():
    return "tpu", None, None, None
  return "single", None, None, None


def _require_all(values: dict[str, Any], hint: str) -> None:
  missing = [name for name, v in values.items() if v is None]
  if missing:
    given = [name for name, v in values.items() if v is not None]
    raise ValueError(f"distributed: {', '.join(given)} given but {', '.join(missing)} missing; {hint}")


def _parse_int(name: str, value: str) -> int:
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"distributed: {name}={value!r} is not an integer") from None


def _check_range(count: int, pid: int, count_name: str, pid_name: str) -> tuple[int, int]:
  if count < 1:
    raise ValueError(f"distributed: {count_name}={count} must be >= 1")
  if not 0 <= pid < count:
    raise ValueError(f"distributed: {pid_name}={pid} must be in [0, {count_name}={count})")
  return count, pid


def _env_int(name: str) -> int:
  try:
    return int(os.environ.get(name, "1"))
  except ValueError:
    return 1


def _in_slurm_step() -> bool:
  # SLURM_STEP_NODELIST exists only inside an srun step, which JAX's SLURM detection needs; the
  # batch script sees SLURM_NTASKS > 1 too but is a single process.
  return ("SLURM_JOB_ID" in os.environ and "SLURM_STEP_NODELIST" in os.environ
          and _env_int("SLURM_NTASKS") > 1)


def _in_open_mpi() -> bool:
  return "OMPI_MCA_orte_hnp_uri" in os.environ and _env_int("OMPI_COMM_WORLD_SIZE") > 1


def _on_tpu_cluster() -> bool:
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms and "tpu" not in platforms.split(","):
    return False
  hosts = os.environ.get("TPU_PROCESS_ADDRESSES") or os.environ.get("TPU_WORKER_HOSTNAMES") or ""
  if len([h for h in hosts.split(",") if h.strip()]) > 1 or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return True
  # Set by `import jax` when libtpu and TPU chips are present (jax/_src/cloud_tpu_init.py); on a
  # Cloud TPU VM the worker list lives in GCE metadata, which JAX's detection reads.
  try:
    from jax._src import cloud_tpu_init
  except ImportError:  # a later jax moved it: fall back to the environment hints above
    return False
  return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def sum_over_processes(local: np.ndarray) -> np.ndarray:
  """The elementwise sum of every process's `local` (the same shape on each); a collective: every
  process calls it at the same point."""
  if jax.process_count() == 1:
    return local
  from jax.experimental import multihost_utils  # lazy: multi-host only
  return np.asarray(multihost_utils.process_allgather(local)).sum(axis=0)


def _reset_for_tests() -> None:
  global _result
  _result = None
