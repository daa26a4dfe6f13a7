"""Distillation from a frozen teacher (vljax/train/teacher.py, vljax/objectives/distillation.py):
the teacher gets no gradient and is never written, a student equal to its teacher has nothing to
learn, distill_logits against numpy, the objectives beside softmax_contrastive in one run, exact
resume with the teacher read again, bad settings named."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from conftest import sigterm_after_logging, tiny_config
from random_workdirs import write_random_workdir
from vljax import checkpoint_io, config as config_lib, objectives
from vljax.metrics import read_metrics
from vljax.objectives import distillation
from vljax.parallel.mesh import make_mesh
from vljax.parallel.sharding import LOGICAL_RULES
from vljax.train import setup, state as state_lib, step as step_lib, teacher as teacher_lib
from vljax.train.trainer import _global_batch, train_and_evaluate

OBJECTIVES = {"softmax_contrastive": 1.0, "distill_logits": 1.0,
              "distill_embeddings": {"weight": 1.0, "kind": "mse"}}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
  """A random-weight teacher of the student's architecture (seed 1: not the student's init)."""
  return write_random_workdir(str(tmp_path_factory.mktemp("teacher")), tiny_config(evals={}), seed=1)


def _config(teacher_dir, **overrides):
  keys = dict(objectives=OBJECTIVES, teacher=dict(workdir=teacher_dir, step=-1, weights="raw"), total_steps=3,
              evals={}, checkpoint=dict(every=1, keep=10, async_save=False))
  keys.update(overrides)
  return tiny_config(**keys)


def _flat(tree):
  return traverse_util.flatten_dict(jax.tree.map(np.asarray, tree), sep="/")


@pytest.fixture(scope="module")
def straight_run(teacher_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("student"))
  train_and_evaluate(_config(teacher_dir), workdir)
  return workdir


def test_combines_with_the_students_own_objective(straight_run, teacher_dir):
  """One run: every objective's loss logged under its name and finite; the student's checkpoint
  holds its own params only; the teacher's workdir keeps its one checkpoint."""
  series = read_metrics(straight_run)
  for name in ("loss", "softmax_contrastive_loss", "distill_logits_loss", "distill_embeddings_loss"):
    values = [series[f"train/{name}"][s] for s in (1, 2, 3)]
    assert np.all(np.isfinite(values)), name
  assert series["train/distill_embeddings_loss"][1] > 0  # a teacher of other weights: something to learn
  student, _ = checkpoint_io.load_params(straight_run)
  teacher, _ = checkpoint_io.load_params(teacher_dir)
  assert sorted(_flat(student)) == sorted(_flat(teacher))  # same architecture, no teacher subtree added
  assert checkpoint_io.checkpoint_steps(teacher_dir) == [0]


def test_resume_reads_the_teacher_again_and_matches_the_straight_run(straight_run, teacher_dir, tmp_path,
                                                                    monkeypatch):
  part = str(tmp_path / "part")
  sigterm_after_logging(monkeypatch, 1)
  train_and_evaluate(_config(teacher_dir), part)
  monkeypatch.undo()
  assert checkpoint_io.checkpoint_steps(part)[-1] < 3
  train_and_evaluate(_config(teacher_dir), part)
  resumed, straight = read_metrics(part), read_metrics(straight_run)
  for name in ("loss", "distill_logits_loss", "distill_embeddings_loss"):
    for step in (2, 3):
      np.testing.assert_allclose(resumed[f"train/{name}"][step], straight[f"train/{name}"][step], rtol=1e-6,
                                 err_msg=f"{name} at step {step}")


@pytest.fixture(scope="module")
def one_device(teacher_dir):
  """(cfg, parts, mesh, state, shardings, placed teacher) on one CPU device."""
  cfg = _config(teacher_dir, mesh=dict(data=1, fsdp=1, tensor=1))
  parts = setup.build(cfg)
  mesh = make_mesh(cfg.mesh, devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    inputs = state_lib.dummy_inputs(cfg, 1)
    state, shardings = state_lib.create_train_state(parts.model, parts.tx, cfg, mesh, inputs)
    teacher = teacher_lib.place(parts.teacher, mesh, inputs)
  return cfg, parts, mesh, state, shardings, teacher


def _batch(seed=0, n=16):
  rng = np.random.RandomState(seed)
  return {"image": jnp.asarray(rng.rand(n, 32, 32, 3) * 2 - 1, jnp.float32),
          "text": jnp.asarray(rng.randint(3, 20, (n, 12)), jnp.int32)}


def test_the_teacher_gets_no_gradient_and_is_never_changed(one_device):
  """The loss's gradient with respect to the teacher's params is zero (here for a student equal to its
  teacher, which has nothing to distill); train steps leave the teacher's params bit for bit."""
  cfg, parts, mesh, state, shardings, teacher = one_device
  loss_fn = step_lib.make_loss_fn(parts.model, cfg, teacher.module)

  def loss_of_teacher(teacher_params):
    with nn.logical_axis_rules(LOGICAL_RULES):
      return loss_fn(teacher.params, {}, _batch(), jax.random.PRNGKey(0), None, None, teacher_params)
  with jax.set_mesh(mesh):
    (_, metrics), grads = jax.jit(jax.value_and_grad(loss_of_teacher, has_aux=True))(teacher.params)
    assert all(not np.any(g) for g in _flat(grads).values())
    assert abs(float(metrics["distill_embeddings_loss"])) < 1e-6  # the student is its teacher
    assert abs(float(metrics["distill_logits_loss"])) < 1e-5
    assert float(metrics["softmax_contrastive_loss"]) > 0.1
    before = _flat(teacher.params)
    step = step_lib.make_train_step(parts.model, parts.tx, cfg, parts.schedule, mesh, shardings, teacher)
    s = jax.tree.map(jnp.copy, state)
    for seed in (0, 1):
      s, metrics = step(s, _global_batch({k: np.asarray(v) for k, v in _batch(seed).items()}, mesh))
    assert np.isfinite(float(metrics["distill_logits_loss"])) and float(metrics["distill_embeddings_loss"]) > 0
  after = _flat(teacher.params)  # still alive (not donated) and bit for bit the same
  for key, value in before.items():
    np.testing.assert_array_equal(after[key], value, err_msg=key)


def test_a_step_for_a_teacher_config_needs_the_teacher(one_device):
  cfg, parts, mesh, _, shardings, _ = one_device
  with pytest.raises(ValueError, match=r"config.teacher.workdir='.*': build the train step with the loaded teacher"):
    step_lib.make_train_step(parts.model, parts.tx, cfg, parts.schedule, mesh, shardings)


def test_gradcache_splits_distill_embeddings_but_not_distill_logits(teacher_dir):
  config_lib.validate(_config(teacher_dir, objectives={"softmax_contrastive": 1.0, "distill_embeddings": 1.0},
                              grad_accum_steps=2, grad_accum_mode="gradcache"))
  with pytest.raises(ValueError, match=r"grad_accum_mode='gradcache' cannot split objective\(s\) \['distill_logits'\]"):
    config_lib.validate(_config(teacher_dir, grad_accum_steps=2, grad_accum_mode="gradcache"))


def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_kl(t, s):
  lt, ls = _np_log_softmax(t), _np_log_softmax(s)
  return np.mean(np.sum(np.exp(lt) * (lt - ls), -1))


def test_distill_logits_equals_numpy(one_device):
  """Student of width 16 against a teacher of width 8 (distill_logits needs no common width)."""
  _, _, _, _, _, teacher = one_device
  rng = np.random.RandomState(3)
  unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)  # noqa: E731
  zimg, ztxt = unit(rng.randn(6, 16)), unit(rng.randn(6, 16))
  zimg_t, ztxt_t = unit(rng.randn(6, 8)), unit(rng.randn(6, 8))
  s, s_t = 7.0, 12.0
  student, teach = s * zimg @ ztxt.T, s_t * zimg_t @ ztxt_t.T
  expected = (_np_kl(teach, student) + _np_kl(teach.T, student.T)) / 2
  got = distillation.similarity_distillation_loss(zimg, ztxt, zimg_t, ztxt_t, s, s_t)
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)

  # The objective itself: the teacher's embeddings and scale from its own passes.
  batch = _batch(n=6)
  access = objectives.ModelAccess(None, None, jax.random.PRNGKey(0), teacher=(teacher.module, teacher.params))
  out_i = teacher.module.apply({"params": teacher.params}, image=batch["image"])
  out_t = teacher.module.apply({"params": teacher.params}, text=batch["text"])
  outputs = {"img_emb": zimg, "txt_emb": ztxt, "logit_scale": jnp.asarray(s)}
  ti, tt, ts = (np.asarray(x, np.float64) for x in (out_i["img_emb"], out_t["txt_emb"], out_i["logit_scale"]))
  loss, _ = objectives.call_objective("distill_logits", outputs, batch, {}, model=access)
  teach = ts * ti @ tt.T
  expected = (_np_kl(teach, student) + _np_kl(teach.T, student.T)) / 2
  np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
  loss, _ = objectives.call_objective("distill_logits", outputs, batch, {"temperature": 0.5}, model=access)
  teach, student = ti @ tt.T / 0.5, zimg @ ztxt.T / 0.5
  np.testing.assert_allclose(float(loss), (_np_kl(teach, student) + _np_kl(teach.T, student.T)) / 2, rtol=1e-4)


def test_no_teacher_is_named(teacher_dir):
  cfg = tiny_config(objectives={"softmax_contrastive": 1.0, "distill_logits": 1.0}, evals={})
  with pytest.raises(ValueError, match=r"objectives.distill_logits needs a teacher: set teacher.workdir"):
    config_lib.validate(cfg)
  access = objectives.ModelAccess(None, None, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match=r"objectives.distill_embeddings needs a teacher: set teacher.workdir"):
    objectives.call_objective("distill_embeddings", {"img_emb": 0, "txt_emb": 0}, _batch(n=2), {}, model=access)


def test_bad_teachers_are_named(teacher_dir, tmp_path):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match=rf"config.teacher.workdir='{missing}'.*config.json' does not exist"):
    config_lib.validate(_config(missing))
  with pytest.raises(ValueError, match=r"config.teacher.weights='best' is invalid; valid: one of \['raw', 'ema'\]"):
    config_lib.validate(_config(teacher_dir, teacher=dict(workdir=teacher_dir, step=-1, weights="best")))
  with pytest.raises(ValueError, match=r"config.teacher.step=7 is not a checkpoint of .*valid: -1 \(the latest\) "
                                       r"or one of \[0\]"):
    config_lib.validate(_config(teacher_dir, teacher=dict(workdir=teacher_dir, step=7, weights="raw")))
  no_ckpt = write_random_workdir(str(tmp_path / "no_ckpt"), tiny_config(evals={}), checkpoint=False)
  with pytest.raises(FileNotFoundError, match=r"config.teacher.workdir='.*no_ckpt' holds no checkpoint"):
    config_lib.validate(_config(no_ckpt))
  other_tok = write_random_workdir(str(tmp_path / "tok"), tiny_config(evals={}, data=dict(tokenizer="shapes?pad=eos")),
                                   checkpoint=False)
  with pytest.raises(ValueError, match=r"reads text with tokenizer 'shapes\?pad=eos', this run with "
                                       r"data.tokenizer='shapes': the teacher would read other tokens"):
    config_lib.validate(_config(other_tok))


def test_a_teacher_of_another_width_is_refused_without_a_projection(tmp_path):
  narrow = tiny_config(evals={})
  narrow.model.contrastive.embed_dim = 8
  narrow_dir = write_random_workdir(str(tmp_path / "narrow"), narrow, seed=2)
  with pytest.raises(ValueError, match=r"objectives.distill_embeddings compares the student's img_emb with the "
                                       r"teacher's, but the teacher '.*narrow' gives width 8 .* and the student 16 "
                                       r".*valid: a student with model.contrastive.embed_dim=8"):
    setup.build(_config(narrow_dir))
  # distill_logits compares [B, B] similarities: any widths.
  parts = setup.build(_config(narrow_dir, objectives={"softmax_contrastive": 1.0, "distill_logits": 1.0}))
  assert parts.teacher.module.contrastive["embed_dim"] == 8
  with pytest.raises(ValueError, match=r"teacher's embeddings have shape \(8,\) \(width 8\) per example, the "
                                       r"student's \(16,\) \(width 16\)"):
    distillation.embedding_distance(jnp.zeros((2, 16)), jnp.zeros((2, 8)), "cosine")


def test_the_bench_times_a_distillation_step_with_its_teacher(teacher_dir):
  from vljax.bench import train as bench
  out = bench.run(_config(teacher_dir, batch_size=8), steps=1, warmup=0, devices=jax.devices()[:1])
  assert out["step_time_median_s"] > 0 and out["examples_per_sec"] > 0
