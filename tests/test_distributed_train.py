"""One train step on 8 simulated devices equals the single-device step; FSDP really shards;
a checkpoint written on one mesh resumes on another (and on one device)."""

import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import first_step
import numerics
from conftest import tiny_config
from vljax.data import pipeline, tokenizers
from vljax.metrics import read_metrics
from vljax.parallel.mesh import batch_shards, make_mesh
from vljax.parallel.sharding import bytes_per_device, tree_bytes
from vljax.train import setup, state as state_lib, step as step_lib, trainer as trainer_lib
from vljax.train.trainer import _global_batch, train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
  cfg = tiny_config(evals={})
  cfg.model.image.variant = "mu/8"
  cfg.model.contrastive.embed_dim = 32
  cfg.schedule.name = "constant"   # a real update on step 1 (warmup would start at lr 0)
  cfg.optimizer.lr = 1e-3
  return cfg


def _batch(cfg):
  ds = pipeline.make_train_dataset(cfg.data, tokenizers.get_tokenizer(cfg.data.tokenizer),
                                   global_batch_size=cfg.batch_size, seed=0)
  return next(iter(ds))


def _one_step(cfg, mesh, batch, initial=None):
  """(params after the step, its metrics): from `initial` (a state moved onto this mesh's layout) or
  the state initialised on the mesh."""
  parts = setup.build(cfg)
  with jax.set_mesh(mesh):
    inputs = state_lib.dummy_inputs(cfg, batch_shards(mesh))
    if initial is None:
      state, shardings = state_lib.create_train_state(parts.model, parts.tx, cfg, mesh, inputs)
    else:
      _, shardings = state_lib.plan_train_state(parts.model, parts.tx, cfg, mesh, inputs)
      state = jax.device_put(initial, shardings)
    train_step = step_lib.make_train_step(parts.model, parts.tx, cfg, parts.schedule, mesh, shardings)
    state, metrics = train_step(state, _global_batch(batch, mesh))
    return jax.device_get(state.params), jax.device_get(metrics)


def _initial_state(cfg):
  """The state initialised on one device, on the host (what a test places onto other layouts)."""
  parts = setup.build(cfg)
  one_device = make_mesh({"data": 1}, devices=jax.devices()[:1])
  with jax.set_mesh(one_device):
    return jax.device_get(state_lib.create_train_state(parts.model, parts.tx, cfg, one_device,
                                                       state_lib.dummy_inputs(cfg, 1))[0])


@pytest.fixture(scope="module")
def reference():
  cfg = _config()
  batch = _batch(cfg)
  one_device = make_mesh({"data": 1}, devices=jax.devices()[:1])
  initial = _initial_state(cfg)
  params, metrics = _one_step(cfg, one_device, batch, initial)
  first = first_step.first_step(cfg, one_device, batch, initial)
  return cfg, batch, params, metrics, first, numerics.first_step_gradient_terms(cfg, first), initial


MESHES = {"data8": {"data": 8}, "fsdp8": {"fsdp": 8}, "d2f2t2": {"data": 2, "fsdp": 2, "tensor": 2}}


# Both losses on every axis at once (d2f2t2), and each on one 8-way batch layout: the gathered loss
# with replicated params (gradients all-reduced), the ring with FSDP (params gathered, gradients
# reduce-scattered). data8 and fsdp8 split the batch alike, so the other two pairings add no sum order.
@pytest.mark.cross_path
@pytest.mark.parametrize("loss_impl, mesh_name", [("gather", "d2f2t2"), ("shard_map", "d2f2t2"),
                                                  ("gather", "data8"), ("shard_map", "fsdp8")])
def test_sharded_first_step_equals_single_device(reference, mesh_name, loss_impl):
  """Loss and every gradient within the float32 bound of reordering the batch's sums (the same
  initial state placed on each layout: born-sharded init is the whole-step test's, below)."""
  _, batch, _, _, ref_first, terms, initial = reference
  cfg = _config()
  cfg.loss_impl = loss_impl
  # One device holds 16 examples, each of 8 devices 2: another program per device, so each example's
  # own terms (12 tokens, 16 patches) may be added in another order too.
  got = first_step.first_step(cfg, make_mesh(MESHES[mesh_name]), batch, initial)
  numerics.assert_first_steps_within_reordering(got, ref_first, terms, positions=16)


@pytest.mark.cross_path
def test_sharded_step_equals_single_device(reference):
  """The whole step (clipping, sharded Adam state) on data x fsdp x tensor, from the state
  initialised there (the default loss: each loss's gradients are the first-step test's)."""
  _, batch, ref_params, ref_metrics, *_ = reference
  cfg = _config()
  params, metrics = _one_step(cfg, make_mesh(MESHES["d2f2t2"]), batch)
  # Loss and gradient norm carry the reordering checked above (~1e-7 relative); Adam's first update
  # lr * g / (|g| + eps) turns a gradient difference dg into at most lr * dg / eps; atol 1e-5 (1% of
  # lr) holds what every ISA gave with room.
  np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(metrics["grad_norm"], ref_metrics["grad_norm"], rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), params, ref_params)


def test_fsdp8_holds_an_eighth_per_device():
  cfg = _config()
  # Width 128: small replicated leaves (biases on tensor dims, the temperature) weigh as in real models.
  for tower in (cfg.model.image, cfg.model.text):
    tower.update(width=128, mlp_dim=512, num_heads=4)
  parts, mesh = setup.build(cfg), make_mesh({"fsdp": 8})
  with jax.set_mesh(mesh):  # the state as initialised on the mesh (the step keeps its shardings)
    state, _ = state_lib.create_train_state(parts.model, parts.tx, cfg, mesh, state_lib.dummy_inputs(cfg, 8))
  per_device, total = bytes_per_device((state.params, state.opt_state)), tree_bytes((state.params, state.opt_state))
  assert len(per_device) == 8
  assert max(per_device.values()) <= total / 8 * 1.05, (per_device, total)


@pytest.mark.slow  # out of CI's instruction-set rerun (its time); still in make test
@pytest.mark.cross_path
def test_sigmoid_ring_step_equals_single_device():
  cfg = _config()
  cfg.objectives = {"sigmoid_contrastive": 1.0}
  cfg.model.contrastive.logit_bias_init = -10.0
  batch = _batch(cfg)
  _, ref = _one_step(cfg, make_mesh({"data": 1}, devices=jax.devices()[:1]), batch)
  cfg.loss_impl = "shard_map"
  _, got = _one_step(cfg, make_mesh({"data": 2, "fsdp": 2, "tensor": 2}), batch)
  # the ring adds the 16 x 16 pairs block by block: 2 gamma_255 = 3e-5 of sum|terms| at worst, a
  # random walk's ~1e-6 in practice; the terms are all >= 0, so relative to the loss itself
  np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-5)
  np.testing.assert_allclose(got["grad_norm"], ref["grad_norm"], rtol=1e-5)


def _restore_cfg(mesh: dict, steps: int):
  c = tiny_config(evals={}, total_steps=steps)
  c.model.image.num_heads = c.model.text.num_heads = 4  # heads shard over tensor=4
  c.mesh = mesh
  return c


def _restored_leaves(cfg, workdir: str) -> list:
  """The state the trainer resumes `workdir` with on `cfg.mesh`, on the host, and that each leaf
  lies as that mesh's plan says."""
  parts, mesh = setup.build(cfg), make_mesh(cfg.mesh)
  with jax.set_mesh(mesh):
    start = trainer_lib._resume_or_start(cfg, workdir, parts, mesh)
    start.checkpointer.close()
  for leaf, sharding in zip(jax.tree.leaves(start.state), jax.tree.leaves(start.shardings)):
    assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim), (leaf.sharding, sharding)
  return [np.asarray(x) for x in jax.device_get(jax.tree.leaves(start.state))]


def _copy_without_metrics(workdir: str, to) -> str:
  shutil.copytree(workdir, to)
  (to / "metrics.jsonl").unlink()
  return str(to)


# The values a resumed state holds are checked bit for bit here; what a step on another mesh then
# computes is test_sharded_step_equals_single_device's (the same step program, from any state).
def test_restore_onto_a_different_mesh(tmp_path):
  fsdp8, moved = dict(data=1, fsdp=8, tensor=1), dict(data=2, fsdp=1, tensor=4)
  saved = str(tmp_path / "saved")
  train_and_evaluate(_restore_cfg(fsdp8, 3), saved)  # its last checkpoint: step 3
  expected = _restored_leaves(_restore_cfg(fsdp8, 3), saved)
  for got, want in zip(_restored_leaves(_restore_cfg(moved, 3), saved), expected, strict=True):
    np.testing.assert_array_equal(got, want)
  # ... and the trainer goes on from there on the other mesh: step 4, not step 1 again
  on_moved = _copy_without_metrics(saved, tmp_path / "moved")
  train_and_evaluate(_restore_cfg(moved, 4), on_moved)
  assert sorted(read_metrics(on_moved)["train/loss"]) == [4]
  # Onto one device: a fresh process that sees a single CPU device restores the same values.
  single = _copy_without_metrics(saved, tmp_path / "single")
  script = (
      "import sys; sys.path.insert(0, 'tests')\n"
      "import numpy as np\n"
      "import test_distributed_train as t  # sets 8 devices; this process wants one\n"
      "import jax; jax.config.update('jax_num_cpu_devices', 1)\n"
      "c = t._restore_cfg(dict(data=1, fsdp=1, tensor=1), 4)\n"
      f"assert jax.device_count() == 1; np.savez({str(tmp_path / 'single.npz')!r}, *t._restored_leaves(c, {single!r}))\n"
      f"t.train_and_evaluate(c, {single!r})\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=ROOT, capture_output=True)
  with np.load(tmp_path / "single.npz") as got:
    assert len(got.files) == len(expected)
    for i, want in enumerate(expected):
      np.testing.assert_array_equal(got[f"arr_{i}"], want)
  assert sorted(read_metrics(single)["train/loss"]) == [4]


def test_a_mesh_that_cannot_hold_a_parameter_is_a_clear_error(tmp_path):
  c = tiny_config(evals={}, total_steps=1)  # text and image towers have 2 heads
  c.schedule.warmup_steps = 1
  c.mesh = dict(data=2, fsdp=1, tensor=4)
  with pytest.raises(ValueError, match=r"param \S+ of shape .* cannot be sharded on mesh .*over \('tensor',\) = 4 ways"):
    train_and_evaluate(c, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


# The language model alone ("lm") is not listed: LLaVA holds it whole (txt, lm, logits, the same names and
# logical axes), and its text-only batch is sharded on the batch axes like every other batch array.
# One layer of each kind: a layout is the same in every layer, and each layer more is seconds of compiling.
ONE_LAYER = dict(depth=1)
DECODER_MODELS = {
    # Every head of the composable model at once: MAP image pooling, sigmoid bias, parallel prediction.
    # CoCa and CapPa are configurations of it (vljax/models/legacy.py), so they add no other layout;
    # both contrastive losses' distributed forms are checked on the two-tower model above.
    "composable": (dict(name="composable", image=dict(variant="mu/8", **ONE_LAYER),
                        text=dict(variant="mu", num_heads=2, **ONE_LAYER),
                        contrastive=dict(embed_dim=32, logit_scale_init=10.0, logit_bias_init=-10.0, image_pool="map"),
                        decoder=dict(variant="mu", mode="parallel", parallel_fraction=0.5, memory_queries=8,
                                     **ONE_LAYER)),
                   {"sigmoid_contrastive": 1.0, "captioning": 2.0}, "caption"),
    "llava": (dict(name="llava", image=dict(variant="mu/8", **ONE_LAYER),
                   text=dict(variant="mu", max_len=64, **ONE_LAYER)),
              {"captioning": 1.0}, "vlm"),
    "flamingo": (dict(name="flamingo", image=dict(variant="mu/8", **ONE_LAYER),
                      text=dict(variant="mu", max_len=32, **ONE_LAYER), num_latents=4, resampler_depth=1),
                 {"captioning": 1.0}, "vlm"),
}


@pytest.mark.cross_path
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DECODER_MODELS))
def test_decoder_models_step_on_fsdp4_tensor2_equals_single_device(name):
  model, objectives, data_format = DECODER_MODELS[name]
  cfg = _config()
  cfg.model, cfg.objectives = model, objectives
  cfg.data.update(format=data_format, max_len=32)
  batch = _batch(cfg)
  one_device = make_mesh({"data": 1}, devices=jax.devices()[:1])
  initial = _initial_state(cfg)  # initialised once: born-sharded init is the two-tower tests' (above)
  ref_params, ref = _one_step(cfg, one_device, batch, initial)
  params, got = _one_step(cfg, make_mesh({"fsdp": 4, "tensor": 2}), batch, initial)
  # as in test_sharded_step_equals_single_device: reordered sums, then Adam's bounded first update
  np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got["grad_norm"], ref["grad_norm"], rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), params, ref_params)
