"""Mesh sizes from config, batch divisibility, frozen-param splitting, decay mask, schedules."""

import jax
import numpy as np
import pytest

from conftest import tiny_config
from vljax.parallel import mesh as mesh_lib
from vljax.train import optim


def test_mesh_fill_and_errors():
  assert mesh_lib.resolve_mesh_shape({"data": -1}, 8) == (8, 1, 1)
  assert mesh_lib.resolve_mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 8) == (2, 2, 2)
  with pytest.raises(ValueError, match="needs 16 devices but 8 exist"):
    mesh_lib.resolve_mesh_shape({"data": 16}, 8)
  with pytest.raises(ValueError, match="unknown axis.*'model'"):
    mesh_lib.resolve_mesh_shape({"model": 2}, 8)
  with pytest.raises(ValueError, match="at most one axis"):
    mesh_lib.resolve_mesh_shape({"data": -1, "fsdp": -1}, 8)
  m = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  assert all(t == jax.sharding.AxisType.Auto for t in m.axis_types)
  with pytest.raises(ValueError, match=r"batch_size=6 is not divisible .* data x fsdp = 4"):
    mesh_lib.check_batch_divisible(6, m)


def test_split_and_merge_frozen():
  params = {"img": {"enc": {"kernel": np.ones((2, 2))}, "b": np.zeros(2)}, "txt": {"kernel": np.ones(3)}, "t": 1.0}
  trainable, frozen = optim.split_frozen(params, ["img/.*"])
  assert set(trainable) == {"txt", "t"} and set(frozen) == {"img"}
  merged = optim.merge_params(trainable, frozen)
  assert jax.tree.structure(merged) == jax.tree.structure(params)
  with pytest.raises(ValueError, match="matches no parameter"):
    optim.split_frozen(params, ["vision/.*"])
  with pytest.raises(ValueError, match="freezes every parameter"):
    optim.split_frozen(params, [".*"])
  with pytest.raises(ValueError, match="not a valid regex"):
    optim.split_frozen(params, ["img/("])


def test_weight_decay_only_on_kernels():
  mask = optim._decay_mask({"a": {"kernel": 1.0, "bias": 1.0, "scale": 1.0}, "embedding": 1.0})
  assert mask == {"a": {"kernel": True, "bias": False, "scale": False}, "embedding": False}


def test_schedule_warmup_cosine():
  cfg = tiny_config()
  cfg.optimizer.lr, cfg.schedule.warmup_steps = 1.0, 10
  sched = optim.make_schedule(cfg, 100)
  assert float(sched(0)) == 0.0 and abs(float(sched(10)) - 1.0) < 1e-6 and float(sched(100)) < 1e-6
  cfg.schedule.name = "linear_decay"
  with pytest.raises(ValueError, match="'linear_decay' is unknown; valid"):
    optim.make_schedule(cfg, 100)
