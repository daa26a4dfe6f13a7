"""The compositionality evaluator on ARO, SugarCrepe, Winoground and JSONL sets written to disk: each
layout's rows reach the scorer as the benchmark pairs them, accuracies and Winoground's three scores
come out as hand-computed, and bad sets fail when opened, naming the row or the file."""

import json

import jax
import numpy as np
import pytest
from flax import linen as nn
from PIL import Image

from conftest import tiny_config
from vljax import evals
from vljax.data import shapes, tokenizers
from vljax.evals import shapes_negatives, world as world_lib
from vljax.evals.compositionality import CompositionalityEvaluator, choice_metrics, winoground_metrics
from vljax.inference.runner import ModelRunner
from vljax.parallel.mesh import make_mesh
from vljax.train import setup, state as state_lib

DATA = {"image_size": 16, "normalization": "siglip"}


class Vocabulary:
  """A tokenizer whose ids name whole captions, so the fake runner can read them back."""

  def __init__(self):
    self.texts = []

  def encode(self, texts, max_len):
    ids = np.zeros((len(texts), max_len), np.int32)
    for i, t in enumerate(texts):
      if t not in self.texts:
        self.texts.append(t)
      ids[i, 0] = self.texts.index(t)
    return ids


class TableRunner:
  """Scores (gray level of the image, caption) pairs from a table; unknown pairs score 0."""

  chunk = 2  # several chunks even for the small sets: rows must stay with their own texts

  def __init__(self, vocabulary, table):
    self.vocabulary, self.table, self.seen = vocabulary, table, []

  def pair_scores(self, params, images, tokens, scoring):
    assert scoring == "auto"
    levels = np.rint((images.mean(axis=(1, 2, 3)) + 1) * 127.5).astype(int)  # siglip: x / 127.5 - 1
    self.seen += list(levels)
    return {k: np.array([self.table.get((int(lv), self.vocabulary.texts[t[0]]), 0.0) for lv, t in zip(levels, ids)])
            for k, ids in tokens.items()}


def _gray(path, level, size=(20, 24)):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new("RGB", size, (level,) * 3).save(path)
  return path.name


def _evaluator(dataset, **settings):
  vocabulary = Vocabulary()
  ev = CompositionalityEvaluator(dict(dataset=dataset, **settings), tokenizer=vocabulary, max_len=4, data=DATA)
  return ev, vocabulary


def test_jsonl_accuracy_per_category_and_macro(tmp_path):
  rows = [(10, "a red cube", ["a blue cube"], "color"),           # right
          (20, "a cube left of a ball", ["a ball left of a cube", "two cubes"], "color"),  # tie: a miss
          (30, "one ball", ["two balls"], "color"),               # the negative wins
          (40, "a small cone", ["a big cone", "a cone"], "size")]  # right over both negatives
  with open(tmp_path / "set.jsonl", "w") as f:
    for level, pos, negs, cat in rows:
      f.write(json.dumps(dict(image=_gray(tmp_path / f"{level}.png", level), positive=pos, negatives=negs,
                              category=cat)) + "\n")
  table = {(10, "a red cube"): 2.0, (10, "a blue cube"): 1.0,
           (20, "a cube left of a ball"): 1.0, (20, "a ball left of a cube"): 1.0,
           (30, "one ball"): 1.0, (30, "two balls"): 3.0,
           (40, "a small cone"): 5.0, (40, "a big cone"): 4.0, (40, "a cone"): -1.0}
  ev, vocabulary = _evaluator(dict(layout="jsonl", path=str(tmp_path / "set.jsonl")))
  runner = TableRunner(vocabulary, table)
  out = ev(runner, None)
  assert out == pytest.approx({"acc": 0.5, "macro_acc": (1 / 3 + 1) / 2, "color_acc": 1 / 3, "size_acc": 1.0})
  assert sorted(runner.seen) == [10, 20, 30, 40]


def test_sugarcrepe_folder_takes_categories_from_file_names(tmp_path):
  images = tmp_path / "val2017"
  for name, rows in {"replace_att": {"0": (50, "a red ball", "a green ball")},
                     "swap_obj": {"7": (60, "a cube on a ball", "a ball on a cube"),
                                  "9": (70, "a cone", "a cube")}}.items():
    table = {k: dict(filename=_gray(images / f"{lv}.jpg", lv), caption=c, negative_caption=n)
             for k, (lv, c, n) in rows.items()}
    (tmp_path / "sugarcrepe").mkdir(exist_ok=True)
    (tmp_path / "sugarcrepe" / f"{name}.json").write_text(json.dumps(table))
  ev, vocabulary = _evaluator(dict(layout="sugarcrepe", path=str(tmp_path / "sugarcrepe"),
                                             image_root=str(images)))
  table = {(50, "a red ball"): 1.0, (60, "a ball on a cube"): 1.0, (70, "a cone"): 1.0}
  assert ev(TableRunner(vocabulary, table), None) == pytest.approx(
      {"acc": 2 / 3, "macro_acc": 0.75, "replace_att_acc": 1.0, "swap_obj_acc": 0.5})


def test_aro_crops_the_box_before_scoring(tmp_path):
  image = Image.new("RGB", (40, 20), (0, 0, 0))
  image.paste((200, 200, 200), (0, 0, 20, 20))  # the box: the left half, light gray
  (tmp_path / "vg").mkdir()
  image.save(tmp_path / "vg" / "1.png")
  rows = [dict(image_path="1.png", true_caption="the horse is eating the grass",
               false_caption="the grass is eating the horse", relation_name="eating",
               bbox_x=0, bbox_y=0, bbox_w=20, bbox_h=20)]
  (tmp_path / "rel.json").write_text(json.dumps(rows))
  ev, vocabulary = _evaluator(dict(layout="aro", path=str(tmp_path / "rel.json"),
                                             image_root=str(tmp_path / "vg")))
  runner = TableRunner(vocabulary, {(200, "the horse is eating the grass"): 1.0})
  assert ev(runner, None) == {"acc": 1.0}
  assert runner.seen == [200]  # the whole image would be gray 100


def test_winoground_text_image_and_group_scores(tmp_path):
  # s[i][c] for examples: all right; text right, image wrong; image right, text wrong
  scores = [[[2, 1], [1, 2]], [[2, 1], [3, 4]], [[2, 3], [1, 4]]]
  rows, table = [], {}
  for k, s in enumerate(scores):
    captions = (f"caption {k} a", f"caption {k} b")
    for i in range(2):
      _gray(tmp_path / "images" / f"ex_{k}_img_{i}.png", 10 * (2 * k + i + 1))
      for c in range(2):
        table[(10 * (2 * k + i + 1), captions[c])] = float(s[i][c])
    rows.append(dict(id=k, image_0=f"ex_{k}_img_0", image_1=f"ex_{k}_img_1", caption_0=captions[0],
                     caption_1=captions[1], tag="noun"))
  (tmp_path / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  spec = dict(layout="winoground", path=str(tmp_path / "examples.jsonl"), image_root=str(tmp_path / "images"))
  ev, vocabulary = _evaluator(spec)
  assert ev(TableRunner(vocabulary, table), None) == pytest.approx(
      {"text_score": 2 / 3, "image_score": 2 / 3, "group_score": 1 / 3})
  # An undecodable image drops its example (counted); the others score as before.
  (tmp_path / "images" / "ex_2_img_1.png").write_bytes(b"not a png")
  ev, vocabulary = _evaluator(spec)
  assert ev(TableRunner(vocabulary, table), None) == pytest.approx(
      {"text_score": 1.0, "image_score": 0.5, "group_score": 0.5, "skipped": 1.0})


def test_metrics_count_ties_and_nan_as_misses():
  assert choice_metrics(np.array([[1.0, 1.0], [np.nan, 0.0], [2.0, np.nan]]), ["x"] * 3) == {"acc": 1 / 3}
  s = np.array([[[1.0, 1.0], [0.0, 2.0]], [[np.nan, 0.0], [0.0, 1.0]]])
  assert winoground_metrics(s) == {"text_score": 0.0, "image_score": 0.5, "group_score": 0.0}


def test_labelled_runs_and_registration():
  assert evals.get_evaluator("compositionality_sugarcrepe") is CompositionalityEvaluator


@pytest.mark.parametrize("make, error", [
    (lambda d: dict(dataset=dict(layout="crepe", path=str(d))), r"layout 'crepe' is unknown; valid: \['sugarcrepe', 'aro', 'jsonl', 'winoground'\]"),
    (lambda d: dict(dataset=dict(layout="aro", path=str(d / "nope.json"))), r"dataset path .*nope.json' does not exist"),
    (lambda d: dict(dataset=dict(layout="jsonl", path=str(d / "set.jsonl"), bogus=1)), r"dataset: unknown key\(s\) \['bogus'\]"),
])
def test_bad_settings_name_the_value(tmp_path, make, error):
  (tmp_path / "set.jsonl").write_text("")
  with pytest.raises((ValueError, FileNotFoundError), match=error):
    CompositionalityEvaluator(make(tmp_path), tokenizer=Vocabulary(), max_len=4, data=DATA)


@pytest.mark.parametrize("layout, content, error", [
    ("jsonl", '{"image": "1.png", "positive": "a"}\n', r"set.data:1: a row needs the keys \['image', 'positive', 'negatives'\]; got \['image', 'positive'\]"),
    ("jsonl", '{"image": "1.png", "positive": "a", "negatives": []}\n', r"set.data:1: 'negatives' must be a non-empty list"),
    ("jsonl", '{"image": "1.png", "positive": " ", "negatives": ["b"]}\n', r"set.data:1: needs a non-empty caption string under 'positive'"),
    ("jsonl", '{"image": "2.png", "positive": "a", "negatives": ["b"]}\n', r"1 image file\(s\) missing, e.g. .*2.png' of .*set.data:1"),
    ("jsonl", 'not json\n', r"set.data:1: not a JSON object"),
    ("aro", '{"image_path": "1.png"}', r"ARO holds a JSON list of rows; got a dict"),
    ("aro", '[{"image_path": "1.png", "true_caption": "a", "false_caption": "b", "bbox_x": 0, "bbox_y": 0, '
            '"bbox_w": 0, "bbox_h": 3}]', r"set.data row 0: .*'bbox_w': 0.* is not a box"),
    ("sugarcrepe", '{"3": {"filename": "1.png", "caption": "a"}}', r"set.data id 3: a row needs the keys \['filename', "
                                                                   r"'caption', 'negative_caption'\]"),
    ("winoground", '{"image_0": "1", "image_1": "3", "caption_0": "a", "caption_1": "b"}\n',
     r"missing, e.g. .*3.png' of .*set.data:1"),
])
def test_malformed_rows_and_missing_images_fail_when_opened(tmp_path, layout, content, error):
  _gray(tmp_path / "1.png", 10)
  (tmp_path / "set.data").write_text(content)
  with pytest.raises((ValueError, FileNotFoundError), match=error):
    CompositionalityEvaluator(dict(dataset=dict(layout=layout, path=str(tmp_path / "set.data"))),
                              tokenizer=Vocabulary(), max_len=4, data=DATA)


def test_a_real_model_scores_each_image_with_its_own_captions(tmp_path):
  """An untrained tiny CLIP through ModelRunner, in chunks of 2: the evaluator's accuracy is the one
  computed from the whole set's embeddings at once."""
  cfg = tiny_config(evals={})
  parts = setup.build(cfg)
  params = nn.unbox(parts.model.init(jax.random.PRNGKey(0), **state_lib.dummy_inputs(cfg, 1))["params"])
  mesh = make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
  tok = tokenizers.get_tokenizer(cfg.data.tokenizer)
  world = shapes.ShapesWorld(image_size=cfg.data.image_size)
  examples = [world.binding_example(i) for i in range(5)]
  with open(tmp_path / "set.jsonl", "w") as f:
    for i, e in enumerate(examples):
      Image.fromarray(e["image"]).save(tmp_path / f"{i}.png")
      f.write(json.dumps(dict(image=f"{i}.png", positive=e["caption"],
                              negatives=[e["attribute_swapped"], e["relation_swapped"]])) + "\n")
  data = dict(image_size=cfg.data.image_size, normalization=cfg.data.normalization)
  ev = CompositionalityEvaluator(dict(dataset=dict(layout="jsonl", path=str(tmp_path / "set.jsonl"))),
                                 tokenizer=tok, max_len=cfg.data.max_len, data=data)
  runner = ModelRunner(parts.model, mesh, 2, tok)
  with jax.set_mesh(mesh):
    out = ev(runner, params)
    zimg, _ = ev.set.images.map(lambda x: runner.images(params, x), 8)
    texts = [runner.texts(params, tok.encode([e[k] for e in examples], cfg.data.max_len))
             for k in ("caption", "attribute_swapped", "relation_swapped")]
  scores = np.stack([np.sum(zimg * t, axis=1) for t in texts], axis=1)
  assert out == pytest.approx({"acc": float(np.mean(scores[:, 0] > scores[:, 1:].max(axis=1)))})


def _said_relation(text: str) -> str:
  return next(r for r, phrases in shapes.RELATIONS.items() if any(f" {p} " in text for p in phrases))


def test_shapes_negatives_are_each_kind_and_false_of_the_scene():
  world = shapes.ShapesWorld(image_size=32)
  for i in range(64):
    example = world.binding_example(i)
    caption, negs = shapes_negatives.negatives(example)
    a, b = example["objects"]
    scene = {(o["color"], o["shape"]) for o in (a, b)}
    assert caption == example["caption"] and negs["swap_att"] == example["attribute_swapped"]
    assert sorted(negs) == sorted(shapes_negatives.KINDS) and caption not in negs.values()
    for kind in ("replace_att", "replace_obj", "swap_att", "swap_obj", "add_obj"):  # names an absent object
      assert not set(shapes.color_shape_pairs(negs[kind])) <= scene, (kind, negs[kind], scene)
    assert set(shapes.color_shape_pairs(negs["replace_rel"])) == scene
    assert _said_relation(negs["replace_rel"]) not in shapes.relation(a, b)
    assert negs["add_att"].split()[1] in shapes.SIZES and negs["add_att"].split()[1] != a["size"]


class LengthRunner:
  """Scores a caption by minus its length: the shorter caption wins, equal lengths tie."""

  chunk = 3

  def __init__(self, vocabulary):
    self.vocabulary = vocabulary

  def pair_scores(self, params, images, tokens, scoring):
    return {k: -np.array([len(self.vocabulary.texts[t[0]]) for t in ids], float) for k, ids in tokens.items()}


def test_shapes_mode_scores_each_kind_in_its_own_column():
  vocabulary, data = Vocabulary(), dict(image_size=32, normalization="siglip")
  ev = CompositionalityEvaluator(dict(num_examples=24), tokenizer=vocabulary, max_len=4, data=data)
  out = ev(LengthRunner(vocabulary), None)
  world = world_lib.shapes_world(data, CompositionalityEvaluator)
  pairs = [shapes_negatives.negatives(world.binding_example(i)) for i in range(24)]
  expected = {f"{k}_acc": np.mean([len(c) < len(n[k]) for c, n in pairs]) for k in shapes_negatives.KINDS}
  assert out == pytest.approx({"acc": np.mean(list(expected.values())), **expected})
  assert out["add_obj_acc"] == 1.0 and out["add_att_acc"] == 1.0  # longer negatives: sanity of the columns
