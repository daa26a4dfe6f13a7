"""Few-shot linear probes (vljax/evals/fewshot.py): the closed form against numpy's least squares, the
draws, the shapes tasks' labels, sets on disk, the image features of a model, and the start-up checks."""

import json
import os

import jax
import numpy as np
import pytest
from flax import linen as nn

from conftest import tiny_config
from vljax import evals
from vljax.data import shapes, tokenizers
from vljax.evals import fewshot
from vljax.inference.runner import ModelRunner
from vljax.parallel.mesh import make_mesh
from vljax.train import setup, state as state_lib

SIZE = 32
DATA = dict(world_seed=0, image_size=SIZE)
TOK = tokenizers.get_tokenizer("shapes")


def _lstsq_probe(x_train, y_train, x_test, num_classes, l2):
  """The probe written out independently: whiten by the train rows, append the constant 100, solve
  min |Xw - Y|^2 + l2 |w|^2 as the stacked least-squares system [X; sqrt(l2) I] w = [Y; 0]."""
  x_train, x_test = np.asarray(x_train, np.float64), np.asarray(x_test, np.float64)
  mean, std = x_train.mean(0), x_train.std(0) + 1e-5
  aug = lambda x: np.concatenate([(x - mean) / std, np.full((len(x), 1), 100.0)], axis=1)  # noqa: E731
  a = aug(x_train)
  y = np.where(np.arange(num_classes)[None] == np.asarray(y_train)[:, None], 1.0, -1.0)
  stacked = np.concatenate([a, np.sqrt(l2) * np.eye(a.shape[1])])
  w = np.linalg.lstsq(stacked, np.concatenate([y, np.zeros((a.shape[1], num_classes))]), rcond=None)[0]
  return w, np.argmax(aug(x_test) @ w, axis=1)


@pytest.mark.parametrize("n_per_class, dim", [(10, 6), (2, 40)], ids=["N>=D", "D>N"])
@pytest.mark.parametrize("l2", [1e-3, 1.0, 1024.0])
def test_probe_equals_numpy_least_squares(n_per_class, dim, l2):
  """Both forms of the eigendecomposition (N >= D and D > N) give numpy's ridge solution. Float64
  throughout (features are cast up), so the weights agree to ~1e-9 relative and the predicted
  classes exactly: no test point sits within that of a tie."""
  rng = np.random.default_rng(0)
  classes = 4
  y_train = np.repeat(np.arange(classes), n_per_class)
  centers = rng.normal(size=(classes, dim))
  x_train = (centers[y_train] + rng.normal(size=(len(y_train), dim))).astype(np.float32)
  y_test = rng.integers(classes, size=50)
  x_test = (centers[y_test] + rng.normal(size=(50, dim))).astype(np.float32)
  xtr, xte = fewshot.whiten(x_train, x_test)
  w = fewshot.ridge_weights(xtr, fewshot.one_vs_all(y_train, classes), [l2])[0]
  w_ref, pred_ref = _lstsq_probe(x_train, y_train, x_test, classes, l2)
  np.testing.assert_allclose(w, w_ref, rtol=1e-7, atol=1e-9 * np.abs(w_ref).max())
  np.testing.assert_array_equal(np.argmax(xte @ w, axis=1), pred_ref)
  acc = fewshot.probe_accuracy(x_train, y_train, x_test, y_test, classes, l2)
  assert acc == np.mean(pred_ref == y_test)


def test_draws_nest_shots_and_pick_l2_on_held_out_examples():
  rng = np.random.default_rng(1)
  classes, dim = 3, 8
  pool_y = np.repeat(np.arange(classes), 30)
  centers = rng.normal(size=(classes, dim)) * 3
  pool = centers[pool_y] + rng.normal(size=(len(pool_y), dim))
  test_y = np.tile(np.arange(classes), 20)
  test = centers[test_y] + rng.normal(size=(len(test_y), dim))
  out = fewshot.fewshot_accuracies(pool, pool_y, test, test_y, classes, (1, 5), 4, [1024.0], seed=3)
  assert set(out) == {1, 5} and all(v.shape == (4,) for v in out.values())
  # Draw d's shots are the first k of class c's permutation of rng (seed, d), re-derived here.
  for d in range(4):
    draw = np.random.default_rng([3, d])  # one stream per draw, classes permuted in order (big_vision)
    order = [draw.permutation(np.flatnonzero(pool_y == c)) for c in range(classes)]
    for k in (1, 5):
      idx = np.concatenate([o[:k] for o in order])
      assert out[k][d] == fewshot.probe_accuracy(pool[idx], pool_y[idx], test, test_y, classes, 1024.0)
  assert np.mean(out[5]) > 0.8  # well-separated classes
  again = fewshot.fewshot_accuracies(pool, pool_y, test, test_y, classes, (1, 5), 4, [1024.0], seed=3)
  np.testing.assert_array_equal(again[5], out[5])
  # With a grid, each draw's choice is the best on the next num_val examples per class, not the test set.
  grid = fewshot.fewshot_accuracies(pool, pool_y, test, test_y, classes, (5,), 2, [1e-2, 1e6], num_val=5)
  for d in range(2):
    draw = np.random.default_rng([0, d])
    order = [draw.permutation(np.flatnonzero(pool_y == c)) for c in range(classes)]
    idx, val = (np.concatenate([o[a:b] for o in order]) for a, b in ((0, 5), (5, 10)))
    l2 = fewshot._choose_l2(pool[idx], pool_y[idx], pool[val], pool_y[val], classes, [1e-2, 1e6])
    assert grid[5][d] == fewshot.probe_accuracy(pool[idx], pool_y[idx], test, test_y, classes, l2)


class PixelRunner:
  """Stands in for a model with hand-made features: per named color, the fraction of pixels near it
  (8), and per grid cell, the fraction near any of them (9). They carry color, position and count
  but no shape; accuracy far above chance shows that labels and images line up."""
  chunk = 64

  def image_features(self, params, x):
    pixels = (np.asarray(x, np.float32) * 0.5 + 0.5) * 255  # the siglip preset, undone
    colors = np.array(list(shapes.COLORS.values()), np.float32)
    near = np.linalg.norm(pixels[..., None, :] - colors, axis=-1) < 40  # [N, H, W, 8]
    cell = np.arange(x.shape[1]) * 3 // x.shape[1]
    grid = (cell[:, None] * 3 + cell[None, :]) == np.arange(9)[:, None, None]  # [9, H, W]
    per_cell = np.einsum("nhw,khw->nk", near.any(-1).astype(np.float32), grid) / grid.sum((1, 2))
    return np.concatenate([near.mean((1, 2)), per_cell], axis=1)


def _build(**settings):
  return evals.get_evaluator("fewshot")(settings, tokenizer=TOK, max_len=12, data=DATA)


def test_shapes_tasks_labels_line_up_with_images():
  ev = _build(shots=(1, 25), num_draws=2, num_examples=144, num_pool=576)
  out = ev(PixelRunner(), None)
  tasks = ("color", "shape", "position", "count")
  assert set(out) == {f"{t}_{k}shot{s}" for t in tasks for k in (1, 25) for s in ("", "_std")}
  chance = dict(color=1 / 8, shape=1 / 8, position=1 / 9, count=1 / 3)
  assert out["color_25shot"] > 0.6 and out["position_25shot"] > 0.6 and out["count_25shot"] > 0.45, out
  for t in tasks:
    assert 0.0 <= out[f"{t}_25shot"] <= 1.0 and out[f"{t}_25shot_std"] >= 0.0
  assert out["color_25shot"] > out["color_1shot"] > chance["color"], out
  # Labels as defined: color / shape cycle with the index, position is the drawn cell.
  world = shapes.ShapesWorld(seed=0, image_size=SIZE)
  _, labels = fewshot.single_object_scene(world, 0, 8 * 3 + 5)
  assert (labels["color"], labels["shape"]) == (5, 3)
  _, labels = fewshot.counting_scene(world, 0, 4)
  assert labels == {"count": 1}  # two objects


def _write_jsonl(folder, name, examples):
  from PIL import Image
  os.makedirs(folder / name, exist_ok=True)
  lines = []
  for k, e in enumerate(examples):
    Image.fromarray(e["image"]).save(folder / name / f"{k}.png")
    lines.append(json.dumps({"image": f"{name}/{k}.png", "label": int(e["label"])}))
  (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
  return str(folder / f"{name}.jsonl")


def test_a_set_on_disk_probes_from_its_shots_set(tmp_path):
  world = shapes.ShapesWorld(seed=0, image_size=SIZE)
  names = list(shapes.COLORS)
  # zeroshot labels are color * 8 + shape; the class here is the color.
  ex = lambda i: dict(world.zeroshot_example(i), label=world.zeroshot_example(i)["label"] // 8)  # noqa: E731
  test = _write_jsonl(tmp_path, "test", [ex(i) for i in range(64)])
  pool = _write_jsonl(tmp_path, "pool", [ex(1000 + i) for i in range(128)])
  ev = _build(shots=(5,), num_draws=2, dataset=dict(source="jsonl", path=test, class_names=names),
              shots_dataset=dict(source="jsonl", path=pool, class_names=names))
  out = ev(PixelRunner(), None)
  assert set(out) == {"acc_5shot", "acc_5shot_std"} and out["acc_5shot"] > 0.5, out
  with pytest.raises(ValueError, match="needs shots_dataset"):
    _build(dataset=dict(source="jsonl", path=test, class_names=names))
  with pytest.raises(ValueError, match=r"class 0 has 16 pool example\(s\), fewer than the 25"):
    _build(dataset=dict(source="jsonl", path=test, class_names=names),
           shots_dataset=dict(source="jsonl", path=pool, class_names=names))


@pytest.mark.parametrize("settings, match", [
    (dict(shots=(0, 5)), r"evals.fewshot.shots=\(0, 5\) holds 0"),
    (dict(tasks=["color", "size"]), r"evals.fewshot.tasks=\['color', 'size'\]: \['size'\] not available; "
                                    r"valid: \['color', 'shape', 'position', 'count'\]"),
    (dict(l2_reg=-1.0), r"evals.fewshot.l2_reg=-1.0 is invalid"),
    (dict(num_pool=64), r"task 'color': class 0 has 8 pool example\(s\), fewer than the 25"),
    (dict(bogus=1), r"unknown key\(s\) \['bogus'\]"),
])
def test_bad_settings_fail_at_build(settings, match):
  with pytest.raises(ValueError, match=match):
    _build(**settings)


def test_features_are_the_pooled_tower_output_before_the_head():
  """tiny_config's tower pools by mean ("gap") and has a head to embed_dim 16: the features are the
  mean of its tokens (width 32), not the projected embedding."""
  cfg = tiny_config(evals={})
  parts = setup.build(cfg)
  params = nn.unbox(parts.model.init(jax.random.PRNGKey(0), **state_lib.dummy_inputs(cfg, 1))["params"])
  mesh = make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
  runner = ModelRunner(parts.model, mesh, 8, TOK)
  images = np.random.default_rng(0).normal(size=(5, SIZE, SIZE, 3)).astype(np.float32)
  with jax.set_mesh(mesh):
    feats = runner.image_features(params, images)
    tokens = parts.model.apply({"params": params}, image=images)["img_tokens"]
  assert feats.shape == (5, 32)
  np.testing.assert_allclose(feats, np.asarray(tokens).mean(axis=1), rtol=1e-5, atol=1e-5)


def test_every_model_with_an_image_tower_serves_the_probe_and_lm_does_not():
  from vljax import models
  from vljax.evals import requirements
  from vljax.models.capabilities import IMAGE_FEATURES
  with_tower = {n for n, cls in models.MODELS.items() if IMAGE_FEATURES in requirements.model_capabilities(cls)}
  # two_tower, coca, cappa: composable configurations
  assert with_tower == {"llava", "flamingo", "composable", "prefix_lm", "qformer"}
  cfg = tiny_config(evals=dict(fewshot=dict(every=3)))
  cfg.model = dict(name="lm", text=dict(variant="mu", max_len=48))
  cfg.objectives = {"captioning": 1.0}
  cfg.data.update(dict(format="lm", chunks=1, max_len=24))
  with pytest.raises(ValueError, match=r"evals.fewshot \(frozen image features\) needs an image tower's pooled "
                                       r"features; model 'lm' has none.*Valid: a model with it \(composable, flamingo, "
                                       r"llava, prefix_lm, qformer\)"):
    setup.build(cfg)
