"""LocCa: boxes (shapes world, real records, bad ones counted), location tokens, the per-example task
sequences and their mix, the objective beside the sigmoid loss, the referring-expression evaluator."""

import json
import os

import jax
import numpy as np
import pytest

from conftest import tiny_config
from real_data import encode
from vljax.data import boxes, pipeline, shapes, tokenizers
from vljax.data.sources import records, skips
from vljax.evals import refexp

TOK = tokenizers.get_tokenizer("shapes?loc=16")


def test_location_tokens_are_single_ids_after_all_others_and_decode_back():
  plain = tokenizers.get_tokenizer("shapes")
  assert TOK.vocab_size == plain.vocab_size + len(tokenizers.LOCCA_TOKENS) + 16
  assert TOK.loc_first_id + 15 == TOK.vocab_size - 1 and TOK.loc_bins == 16
  ids = TOK.content_ids("<refexp> a red circle <sep> <loc_3><loc_15>")
  assert ids[-2:] == [TOK.loc_first_id + 3, TOK.loc_first_id + 15]
  assert TOK.decode([[TOK.bos_id, *ids, TOK.eos_id]])[0] == "<refexp> a red circle <sep> <loc_3> <loc_15>"
  assert plain.content_ids("a red circle") == TOK.content_ids("a red circle")  # words keep their ids
  with pytest.raises(ValueError, match="no location tokens.*loc=N"):
    plain.loc_first_id  # noqa: B018


@pytest.mark.parametrize("spec", ["shapes?loc=1", "shapes?loc=0", "shapes?loc=abc", "shapes?loc=2.5"])
def test_bins_below_two_or_not_an_int_are_errors(spec):
  with pytest.raises(ValueError, match=r"loc=.*valid: an integer number of location bins >= 2"):
    tokenizers.get_tokenizer(spec)


def test_quantization_round_trip_within_half_a_bin():
  rng = np.random.default_rng(0)
  for bins in (2, 16, 1000):
    x = rng.uniform(0, 1, (500, 4))
    q = boxes.quantize(x, bins)
    assert q.min() >= 0 and q.max() <= bins - 1
    assert np.abs(boxes.dequantize(q, bins) - x).max() <= 0.5 / bins + 1e-6
    np.testing.assert_array_equal(boxes.quantize(boxes.dequantize(q, bins), bins), q)
  np.testing.assert_array_equal(boxes.quantize([0.0, 0.5, 0.999, 1.0], 4), [0, 2, 3, 3])


def test_sequences_prefix_input_target_and_loss_mask():
  obj = {"box": (0.0, 0.25, 0.5, 1.0), "text": "a large red circle"}
  loc = [TOK.loc_first_id + k for k in (0, 4, 8, 15)]
  text = TOK.content_ids("a large red circle")
  sp = TOK.special_ids
  cases = {"caption": ([TOK.bos_id, sp["<caption>"]], TOK.content_ids("a blue star")),
           "refexp": ([TOK.bos_id, sp["<refexp>"], *text, sp["<sep>"]], loc),
           "grounded": ([TOK.bos_id, sp["<grounded>"], *loc], text)}
  for task, (prompt, target) in cases.items():
    ids, mask = boxes.sequence(TOK, task, "a blue star", obj, 20)
    expect = prompt + target + [TOK.eos_id]
    assert ids.tolist() == expect + [TOK.pad_id] * (20 - len(expect)), task
    assert mask.tolist() == [False] * len(prompt) + [True] * (len(target) + 1) + [False] * (20 - len(expect)), task
    assert boxes.prompt_ids(TOK, task, obj["text"], obj["box"]) == prompt
  # Too long: the text loses its end; the box, <sep> and EOS stay.
  ids, mask = boxes.sequence(TOK, "refexp", "", obj, 10)
  assert ids.tolist() == [TOK.bos_id, sp["<refexp>"], *text[:2], sp["<sep>"], *loc, TOK.eos_id]
  ids, mask = boxes.sequence(TOK, "caption", "a photo of a large red circle on a noisy background", None, 9)
  assert ids[-1] == TOK.eos_id and mask.sum() == 7


def test_task_mix_frequencies_per_example_and_fallbacks():
  tasks = boxes.check_tasks({"caption": 0.2, "refexp": 0.5, "grounded": 0.3})
  objects = [{"box": (0.1, 0.1, 0.2, 0.2), "text": "a red circle"}, {"box": (0.5, 0.5, 0.9, 0.9), "text": "a star"}]
  drawn = [boxes.choose(seed, tasks, objects) for seed in range(4000)]
  freq = {t: np.mean([d[0] == t for d in drawn]) for t in boxes.TASKS}
  for task, p in tasks:
    assert abs(freq[task] - p) < 4 * np.sqrt(p * (1 - p) / 4000), (task, freq)
  assert drawn == [boxes.choose(seed, tasks, objects) for seed in range(4000)]  # a function of the seed
  assert {d[1] for d in drawn if d[0] != "caption"} == {0, 1}
  # refexp needs an object with a text of its own; none at all: the caption.
  twins = [objects[0], dict(objects[0], box=(0.6, 0.6, 0.7, 0.7))]
  assert all(boxes.choose(s, tasks, twins)[0] != "refexp" for s in range(200))
  assert all(boxes.choose(s, tasks, [])[0] == "caption" for s in range(200))


def test_shapes_pipeline_mix_and_boxes_hold_their_objects():
  data = dict(name="shapes", format="locca", tokenizer="shapes?loc=16", image_size=32, max_len=25, num_threads=1,
              locca=dict(tasks=dict(caption=0.5, refexp=0.25, grounded=0.25)))
  it = iter(pipeline.make_train_dataset(data, TOK, global_batch_size=200, seed=0))
  batch = next(it)
  it.close()
  counts = np.bincount(batch["locca_task"], minlength=3) / 200
  assert abs(counts[0] - 0.5) < 0.15 and abs(counts[1] - 0.25) < 0.13 and abs(counts[2] - 0.25) < 0.13, counts
  caption = tokenizers.get_tokenizer("shapes").encode  # "text" stays the plain caption
  assert batch["text"].shape == batch["locca_text"].shape == batch["locca_mask"].shape == (200, 25)
  assert np.all(batch["text"][:, 0] == TOK.bos_id) and caption(["a"], 25).shape == (1, 25)
  world = shapes.ShapesWorld(image_size=64)
  for i in range(20):
    ex, boxed = world.example(i), world.example(i, boxes=True)
    np.testing.assert_array_equal(ex["image"], boxed["image"])
    assert ex["caption"] == boxed["caption"] and ex["objects"] == boxed["objects"]
    for obj, (x0, y0, x1, y1) in zip(boxed["objects"], boxed["boxes"]):
      assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
      assert obj["col"] / 3 - 1e-6 <= x0 and x1 <= (obj["col"] + 1) / 3 + 1e-6  # inside its grid cell
      assert obj["row"] / 3 - 1e-6 <= y0 and y1 <= (obj["row"] + 1) / 3 + 1e-6
      inside = np.zeros((64, 64), bool)
      inside[int(y0 * 64):int(np.ceil(y1 * 64)), int(x0 * 64):int(np.ceil(x1 * 64))] = True
      color = np.asarray(shapes.COLORS[obj["color"]], np.float32)
      close = np.abs(boxed["image"].astype(np.float32) - color).max(-1) < 25
      cell = np.zeros((64, 64), bool)
      cell[round(obj["row"] * 64 / 3):round((obj["row"] + 1) * 64 / 3),
           round(obj["col"] * 64 / 3):round((obj["col"] + 1) * 64 / 3)] = True
      assert (close & cell).sum() > 0 and not (close & cell & ~inside).any(), (i, obj)


@pytest.mark.parametrize("tasks, message", [
    ({"caption": 0.5, "refexp": 0.25}, "sums to 0.75"),
    ({"caption": 1.5, "refexp": -0.5}, r"refexp=-0.5 must be a probability >= 0"),
    ({"caption": 0.5, "detect": 0.5}, r"unknown task\(s\) \['detect'\]; valid: \['caption', 'refexp', 'grounded'\]"),
    ({"caption": "1"}, r"caption='1' must be a probability"),
    ({}, "must be a dict task -> probability"),
])
def test_bad_task_mix_names_the_value(tasks, message):
  data = dict(name="shapes", format="locca", tokenizer="shapes?loc=16", locca=dict(tasks=tasks))
  with pytest.raises(ValueError, match=message):
    pipeline.check_data_config(data)


def test_locca_format_needs_location_tokens_and_room():
  with pytest.raises(ValueError, match=r"data.tokenizer='shapes' has none.*loc=N"):
    pipeline.check_data_config(dict(name="shapes", format="locca"))
  with pytest.raises(ValueError, match=r"data.max_len=6 .*>= 9"):
    pipeline.check_data_config(dict(name="shapes", format="locca", tokenizer="shapes?loc=8", max_len=6))
  with pytest.raises(ValueError, match=r"the 'webdataset' source does not give; valid sources: \['shapes', 'folder'"):
    boxes.check_settings(dict(name="webdataset", path="x", format="locca", tokenizer="shapes?loc=8"))
  with pytest.raises(ValueError, match=r"data.locca: unknown key\(s\) \['bins'\]"):
    pipeline.check_data_config(dict(name="shapes", format="locca", tokenizer="shapes?loc=8", locca=dict(bins=8)))


BAD_OBJECTS = [
    [{"box": [0.1, 0.1, 1.2, 0.5], "text": "a"}],           # outside the image
    [{"box": [0.6, 0.1, 0.4, 0.5], "text": "a"}],           # x1 < x0
    [{"box": [0.1, 0.1, 0.5], "text": "a"}],                # 3 numbers
    [{"box": ["0.1", 0.1, 0.2, 0.5], "text": "a"}],         # not a number
    [{"box": [0.1, 0.1, 0.2, 0.5], "text": ""}],            # no text
    [{"box": [0.1, 0.1, 0.2, 0.5]}, "a"],                   # not a map
    {"box": [0.1, 0.1, 0.2, 0.5], "text": "a"},             # not a list
]


def test_bad_boxes_are_skipped_and_counted_from_jsonl_and_array_record(tmp_path):
  world = shapes.ShapesWorld(image_size=32)
  good = [world.example(i, boxes=True) for i in range(6)]
  rows = [{"image": encode(ex["image"], "PNG"), "caption": ex["caption"], "objects": shapes.object_records(ex)}
          for ex in good]
  rows[0]["objects"] = [{"box": [0.0, 0.0, 1.0, 1.0], "text": "a white square"}]
  rows = rows[:3] + [dict(rows[3], objects=bad) for bad in BAD_OBJECTS] + rows[3:]
  os.makedirs(tmp_path / "jsonl" / "images")
  with open(tmp_path / "jsonl" / "index.jsonl", "w") as f:
    for i, row in enumerate(rows):
      (tmp_path / "jsonl" / "images" / f"{i}.png").write_bytes(row["image"])
      f.write(json.dumps({**row, "image": f"images/{i}.png"}) + "\n")
  with records.RecordWriter(str(tmp_path / "ar")) as writer:
    for i, row in enumerate(rows):
      writer.write_packed(records.pack({"key": str(i), **row}))
  base = dict(format="locca", tokenizer="shapes?loc=16", image_size=32, max_len=25, num_threads=1,
              locca=dict(tasks=dict(grounded=1.0)))
  for name, path in (("folder", tmp_path / "jsonl" / "index.jsonl"), ("array_record", tmp_path / "ar")):
    cfg = dict(base, name=name, path=str(path))
    pipeline.check_data_config(cfg)
    (batch,) = list(pipeline.make_eval_dataset(cfg, TOK, global_batch_size=32))
    assert len(batch["text"]) == 6, name
    assert skips.counts_dict(batch[pipeline.SKIPPED_KEY]) == {"bad_box": len(BAD_OBJECTS)}, name
    # The eval crop of a square image is the image: each box comes back as written (to a bin).
    np.testing.assert_array_equal(batch["locca_text"][0, 2:6], TOK.loc_first_id + np.array([0, 0, 15, 15]))
    assert TOK.decode(batch["locca_text"][:1])[0].endswith("a white square")
    assert TOK.decode(batch["text"])[5] == good[5]["caption"]


def test_training_crops_move_boxes_and_drop_objects_cut_away():
  objects = [{"box": (0.0, 0.0, 0.5, 0.5), "text": "a"}, {"box": (0.5, 0.5, 1.0, 1.0), "text": "b"},
             {"box": (0.25, 0.0, 0.75, 0.5), "text": "c"}]
  out = boxes.crop_objects(objects, (0, 0, 60, 60), 100, 100)  # the top-left 60% of a 100 x 100 image
  assert [o["text"] for o in out] == ["a", "c"]  # b keeps 1% of its area
  np.testing.assert_allclose(out[0]["box"], (0, 0, 50 / 60, 50 / 60))
  np.testing.assert_allclose(out[1]["box"], (25 / 60, 0, 1.0, 50 / 60))  # c keeps 70%: clipped


def test_iou_and_box_scores_against_hand_computed_values():
  a = np.array([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.2, 0.2], [0.1, 0.1, 0.1, 0.4]])
  b = np.array([[0.25, 0.25, 0.75, 0.75], [0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
  np.testing.assert_allclose(boxes.iou(a, b), [0.0625 / 0.4375, 1.0, 0.0, 0.0])
  np.testing.assert_allclose(boxes.iou([0.0, 0.0, 1.0, 0.5], [0.0, 0.0, 0.5, 1.0]), 0.25 / 0.75)
  predicted = np.array([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.25], [0.3, 0.3, 0.1, 0.9], [0.25, 0.25, 0.75, 0.75]])
  truth = np.array([[0.0, 0.0, 0.5, 0.5]] * 4)
  scores = refexp.box_scores(predicted, truth)
  assert scores["acc_iou50"] == 0.5  # IoU 1 and 0.5 pass; an inverted box and 1/7 do not
  np.testing.assert_allclose(scores["mean_iou"], (1 + 0.5 + 0 + 1 / 7) / 4)
  assert scores["valid"] == 0.75


def _siglip_locca_config():
  cfg = tiny_config(evals={"refexp": dict(every=2, num_examples=8)}, batch_size=8)
  cfg.model.image.depth = 0  # the patch embedding alone: a fraction of the compile time
  cfg.model.contrastive.logit_bias_init = -10.0
  cfg.model.decoder = dict(variant="mu", depth=1)
  cfg.objectives = {"sigmoid_contrastive": 1.0, "locca": 1.0}
  cfg.data.update(format="locca", tokenizer="shapes?loc=16", max_len=16,
                  locca=dict(tasks=dict(caption=0.2, refexp=0.5, grounded=0.3)))
  return cfg


def test_sigmoid_and_locca_train_in_one_step_and_the_evaluator_runs():
  from vljax.inference.runner import ModelRunner
  from vljax.parallel.mesh import make_mesh
  from vljax.train import setup, state as state_lib, step as step_lib
  from vljax.train.trainer import _global_batch

  cfg = _siglip_locca_config()
  parts = setup.build(cfg)
  assert "refexp" in parts.evaluators
  it = setup.make_data_iterator(cfg, parts.tokenizer, 0, 1)
  local = next(it)
  it.close()
  mesh = make_mesh({"data": 2}, devices=jax.devices()[:2])
  with jax.set_mesh(mesh):
    state, shardings = state_lib.create_train_state(parts.model, parts.tx, cfg, mesh, state_lib.dummy_inputs(cfg, 2))
    train_step = step_lib.make_train_step(parts.model, parts.tx, cfg, parts.schedule, mesh, shardings)
    history = []
    for _ in range(3):
      state, metrics = train_step(state, _global_batch(local, mesh))
      history.append(jax.device_get(metrics))
    scores = parts.evaluators["refexp"](ModelRunner(parts.model, mesh, 8, parts.tokenizer), state.params)
  keys = ("sigmoid_contrastive_loss", "locca_loss", "locca_refexp_loss", "locca_caption_loss", "locca_grounded_loss")
  for key in keys:
    assert all(np.isfinite(m[key]) for m in history), key
  assert history[-1]["locca_loss"] < history[0]["locca_loss"]
  assert set(scores) == {"acc_iou50", "mean_iou", "valid"} and all(0 <= v <= 1 for v in scores.values())


def test_locca_needs_a_decoder_and_the_refexp_evaluator_location_tokens():
  from vljax.train import setup

  cfg = _siglip_locca_config()
  del cfg.model.decoder
  with pytest.raises(ValueError, match=r"objectives.locca needs model output\(s\) \['memory'\]"):
    setup.build(cfg)
  cfg = tiny_config(evals={"refexp": dict(every=2, num_examples=4)})
  cfg.model.decoder = dict(variant="mu", depth=1)
  cfg.objectives = {"captioning": 1.0}
  with pytest.raises(ValueError, match=r"evals.refexp .*data.tokenizer='shapes' has none.*loc=N"):
    setup.build(cfg)
