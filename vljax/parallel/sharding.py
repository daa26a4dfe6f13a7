"""Logical axis names -> mesh axes: the one table that decides how everything is sharded."""

from __future__ import annotations

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# MaxText-style rules: examples over data+fsdp, weight width over fsdp (ZeRO-3),
# Megatron dims over tensor; the rest replicated.
LOGICAL_RULES = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("length", None),
    ("layers", None),
    ("act_embed", None),  # activations' width: replicated between blocks
)


def logical_to_sharding(logical_specs, mesh: jax.sharding.Mesh, rules=LOGICAL_RULES):
  """Pytree of logical PartitionSpecs -> pytree of NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int) -> NamedSharding:
  """Sharding for a [batch, ...] array: leading axis over the batch mesh axes."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def bytes_per_device(tree) -> dict[int, int]:
  """Bytes of each device's shards of a pytree of jax.Arrays (for memory checks)."""
  out: dict[int, int] = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      out[shard.device.id] = out.get(shard.device.id, 0) + shard.data.size * shard.data.dtype.itemsize
  return out


def tree_bytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))
