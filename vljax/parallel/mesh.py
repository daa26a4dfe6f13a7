"""Device mesh from the config's `mesh` sizes (`-1` fills the remaining devices)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import jax
from jax.sharding import AxisType, Mesh

from vljax.parallel.sharding import BATCH_AXES, MESH_AXES


def check_mesh_sizes(sizes: Mapping[str, int]) -> list[int]:
  """Mesh sizes in MESH_AXES order (-1: fill), checked without devices: known axes, ints, one fill."""
  unknown = sorted(set(sizes) - set(MESH_AXES))
  if unknown:
    raise ValueError(f"mesh: unknown axis {unknown}; valid axes are {list(MESH_AXES)}")
  shape = [sizes.get(axis, 1) for axis in MESH_AXES]
  if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh: sizes must be positive ints or -1 (fill), got {dict(zip(MESH_AXES, shape))}")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, shape))}")
  return [int(s) for s in shape]


def resolve_mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Mesh sizes in MESH_AXES order, with at most one -1 filled from `num_devices`."""
  shape = check_mesh_sizes(sizes)
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"mesh: {dict(zip(MESH_AXES, shape))} cannot fill {num_devices} devices: "
                       f"{num_devices} is not divisible by {known}")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ValueError(f"mesh: {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices but "
                     f"{num_devices} exist; sizes must multiply to {num_devices} (use -1 to fill)")
  return tuple(shape)


def make_mesh(sizes: Mapping[str, int], devices=None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh with Auto axes, as linen's logical constraints need."""
  devices = list(devices) if devices is not None else jax.devices()
  shape = resolve_mesh_shape(sizes, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def batch_shards(mesh: Mesh) -> int:
  """How many ways the batch is split: the product of the batch mesh axes."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch_divisible(global_batch: int, mesh: Mesh, what: str = "batch_size") -> None:
  shards = batch_shards(mesh)
  if global_batch % shards:
    raise ValueError(f"{what}={global_batch} is not divisible by the batch-sharding mesh axes "
                     f"data x fsdp = {shards}; use a multiple of {shards}")
