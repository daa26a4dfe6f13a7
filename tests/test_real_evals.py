"""Zero-shot and retrieval on eval sets on disk (tfds, JSONL): metrics against direct numpy
computations, equivalence with the shapes evaluators, prompt templates, corrupt images, bad input,
and a training run that logs the keys."""

import json
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import linen as nn

from conftest import tiny_config, workdir_listing
from real_data import encode, write_tfds
from vljax import evals
from vljax.data import images as images_lib, shapes, tokenizers
from vljax.data.pipeline import preprocess_images
from vljax.evals import templates
from vljax.evals.arrays import normalize
from vljax.evals.retrieval import RetrievalEvaluator, recall_at_k, retrieval_ranks
from vljax.evals.zeroshot import ZeroShotEvaluator, class_scores, topk_accuracy
from vljax.inference.runner import ModelRunner
from vljax.metrics import read_metrics
from vljax.models import get_model
from vljax.parallel.mesh import make_mesh
from vljax.train import setup, state as state_lib
from vljax.train.trainer import train_and_evaluate

SIZE, MAX_LEN, NUM_CLS, NUM_CAP = 32, 12, 64, 24
# No "a"/"an" to agree: shapes prompts fix articles, published templates are used as written.
TEMPLATES = ["a photo of the {}.", "the {} on a noisy background."]
WORLD = shapes.ShapesWorld(seed=0, image_size=SIZE)  # the world of DATA, which shapes-world evaluators read
DATA = dict(world_seed=0, image_size=SIZE)
TOK = tokenizers.get_tokenizer("shapes")
IMAGE = tfds.features.Image(shape=(None, None, 3))
ID = tfds.features.Scalar(np.int64)


# ---------------------------------------------------------------------------- sets on disk

@pytest.fixture(scope="module")
def sets(tmp_path_factory):
  """Builder directories of a classification set (single-object shapes images, ClassLabel names =
  zeroshot_classes()) and of caption sets (5 references per image), plain and COCO-style."""
  root = tmp_path_factory.mktemp("tfds")
  cls = [WORLD.zeroshot_example(i) for i in range(NUM_CLS)]
  caps = [WORLD.caption_example(i) for i in range(NUM_CAP)]
  out = dict(cls_examples=cls, cap_examples=caps)
  out["cls"] = write_tfds(root, "shapes_cls", {"validation": [dict(image=e["image"], label=e["label"], id=i)
                                                              for i, e in enumerate(cls)]},
                          dict(image=IMAGE, label=tfds.features.ClassLabel(names=WORLD.zeroshot_classes()), id=ID))
  out["cap"] = write_tfds(root, "shapes_cap", {"test": [dict(image=e["image"], captions=e["references"], id=i)
                                                        for i, e in enumerate(caps)]},
                          dict(image=IMAGE, captions=tfds.features.Sequence(tfds.features.Text()), id=ID))
  coco = [dict(image=e["image"], captions=dict(text=e["references"], id=list(range(5))), id=i)
          for i, e in enumerate(caps)]
  out["coco"] = write_tfds(root, "shapes_coco", {"val": coco}, dict(
      image=IMAGE, captions=tfds.features.Sequence(dict(text=tfds.features.Text(), id=ID)), id=ID))
  return out


def _ids(builder_dir, split):
  """The `id` of each example in the order tfds stores (and the evaluators read) them."""
  source = tfds.builder_from_directory(builder_dir).as_data_source(
      split, decoders={"image": tfds.decode.SkipDecoding()})
  return np.array([source[i]["id"] for i in range(len(source))])


def _write_jsonl(folder, rows, name="set.jsonl"):
  os.makedirs(folder / "images", exist_ok=True)
  lines = []
  for k, row in enumerate(rows):
    image = row.pop("image")
    path = f"images/{k}.png"
    with open(folder / path, "wb") as f:
      f.write(image if isinstance(image, bytes) else encode(image, "PNG"))
    lines.append(json.dumps({"image": path, **row}))
  (folder / name).write_text("\n".join(lines) + "\n")
  return str(folder / name)


# ---------------------------------------------------------------------------- a model

@pytest.fixture(scope="module")
def clip():
  """A random tiny two-tower model, its params and a one-device runner."""
  cfg = tiny_config(evals={})
  parts = setup.build(cfg)
  params = nn.unbox(parts.model.init(jax.random.PRNGKey(0), **state_lib.dummy_inputs(cfg, 1))["params"])
  mesh = make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
  return parts.model, params, mesh, ModelRunner(parts.model, mesh, 16, TOK)


def _build(cls, name=None, **settings):
  return evals.get_evaluator(name or cls.name)(settings, tokenizer=TOK, max_len=MAX_LEN, data=DATA)


# ---------------------------------------------------------------------------- templates, metrics

def test_template_sets():
  assert len(templates.CLIP_IMAGENET_TEMPLATES) == 80 == len(set(templates.CLIP_IMAGENET_TEMPLATES))
  assert all(t.count("{}") == 1 for t in templates.CLIP_IMAGENET_TEMPLATES)
  assert templates.CLIP_IMAGENET_TEMPLATES[:2] == ("a bad photo of a {}.", "a photo of many {}.")
  assert len(templates.SHORT_TEMPLATES) == 7 and set(templates.SHORT_TEMPLATES) < set(templates.CLIP_IMAGENET_TEMPLATES)
  assert templates.resolve_templates("clip80") == templates.CLIP_IMAGENET_TEMPLATES
  assert templates.resolve_templates("shapes") == tuple(shapes.PROMPT_TEMPLATES)
  assert templates.fill("a origami {}.", "apple") == "a origami apple."  # as published
  with pytest.raises(ValueError, match=r"'clip81'.*\['clip80', 'shapes', 'short'\]"):
    templates.resolve_templates("clip81")
  for bad in (["a photo of a cat."], ["a {} and a {}."], ["a photo of a {c}."]):
    with pytest.raises(ValueError, match="must be a string with exactly one"):
      templates.resolve_templates(bad)


@pytest.mark.cross_path
def test_topk_accuracy_matches_a_loop():
  rng = np.random.default_rng(0)
  scores, labels = rng.normal(size=(50, 12)), rng.integers(0, 12, 50)
  got = topk_accuracy(scores, labels)
  for k in (1, 5):
    want = np.mean([labels[i] in sorted(range(12), key=lambda c: -scores[i, c])[:k] for i in range(50)])
    assert got[k] == pytest.approx(want)  # a count over 50 rows: the same float64 fraction


def test_retrieval_any_caption_counts():
  # Image 0's 2nd caption ranks first for it while its 1st ranks last: still a hit at R@1.
  scores = np.array([[0.1, 0.9, 0.5, 0.3],
                     [0.8, 0.7, 0.2, 0.6]])
  i2t, t2i = retrieval_ranks(scores, np.array([0, 0, 1, 1]))
  np.testing.assert_array_equal(i2t, [0, 2])
  np.testing.assert_array_equal(t2i, [1, 0, 1, 0])
  assert recall_at_k(i2t) == {1: 0.5, 5: 1.0, 10: 1.0}
  # One caption per image: the diagonal rule of single-caption retrieval.
  s = np.random.default_rng(1).normal(size=(9, 9))
  i2t, t2i = retrieval_ranks(s, np.arange(9))
  np.testing.assert_array_equal(i2t, np.sum(s > np.diag(s)[:, None], axis=1))
  np.testing.assert_array_equal(t2i, np.sum(s.T > np.diag(s)[:, None], axis=1))


# ---------------------------------------------------------------------------- zero-shot

@pytest.mark.cross_path
def test_zeroshot_tfds_matches_numpy(sets, clip):
  model, params, mesh, runner = clip
  with jax.set_mesh(mesh):
    ev = _build(ZeroShotEvaluator, dataset=dict(path=sets["cls"], split="validation", templates=TEMPLATES))
    got = ev(runner, params)
    source = tfds.builder_from_directory(sets["cls"]).as_data_source("validation")
    images = preprocess_images(np.stack([source[i]["image"] for i in range(len(source))]))
    labels = np.array([source[i]["label"] for i in range(len(source))])
    zimg = runner.images(params, images)
    prompts = [t.format(c) for c in WORLD.zeroshot_classes() for t in TEMPLATES]
    ztxt = normalize(runner.texts(params, TOK.encode(prompts, MAX_LEN)).reshape(NUM_CLS, len(TEMPLATES), -1))
  scores = zimg @ normalize(ztxt.mean(axis=1)).T
  order = np.argsort(-scores, axis=1)
  assert set(got) == {"top1", "top5"}
  assert got["top1"] == pytest.approx(np.mean(order[:, 0] == labels))
  assert got["top5"] == pytest.approx(np.mean([labels[i] in order[i, :5] for i in range(len(labels))]))


@pytest.mark.cross_path
def test_zeroshot_shapes_and_tfds_agree(sets, clip):
  """Same images, labels, classes and templates: the same scores and metrics from both evaluators,
  also with the tfds one on 8 devices."""
  _, params, mesh, runner = clip
  with jax.set_mesh(mesh):
    world_ev = _build(ZeroShotEvaluator, num_examples=NUM_CLS, templates=TEMPLATES)
    tfds_ev = _build(ZeroShotEvaluator, dataset=dict(path=sets["cls"], templates=TEMPLATES))
    want, got = world_ev(runner, params), tfds_ev(runner, params)
    world_scores, _ = world_ev.scores(runner, params)
    tfds_scores, kept = tfds_ev.scores(runner, params)
  assert tfds_ev.classes == WORLD.zeroshot_classes()
  np.testing.assert_array_equal(kept, np.arange(NUM_CLS))
  # equal pixels through two loaders, scored in batches of other shapes: cosines within a rounding
  np.testing.assert_allclose(tfds_scores, world_scores[_ids(sets["cls"], "validation")], atol=1e-5)
  assert got["top1"] == want["top1"]
  with jax.set_mesh(mesh):  # streamed in 4 chunks instead of decoded once at build
    streamed = _build(ZeroShotEvaluator, dataset=dict(path=sets["cls"], templates=TEMPLATES, cache_mb=0))
    assert not streamed.images.in_memory
    np.testing.assert_array_equal(streamed.scores(runner, params)[0], tfds_scores)
  mesh8 = make_mesh(dict(data=8, fsdp=1, tensor=1))
  with jax.set_mesh(mesh8):
    assert tfds_ev(ModelRunner(clip[0], mesh8, 16, TOK), params) == pytest.approx(got, abs=1e-9)


def test_tfds_set_by_dataset_folder_or_name(sets):
  folder = os.path.dirname(sets["cls"])  # DATA_DIR/NAME: its newest version
  by_folder = _build(ZeroShotEvaluator, dataset=dict(path=folder, templates=TEMPLATES))
  by_name = _build(ZeroShotEvaluator, dataset=dict(name="shapes_cls", data_dir=os.path.dirname(folder),
                                                   templates=TEMPLATES))
  for ev in (by_folder, by_name):
    assert len(ev.images) == NUM_CLS and ev.classes == WORLD.zeroshot_classes()


def test_zeroshot_likelihood_scoring_on_a_jsonl_set(tmp_path):
  """A captioning model scores a set on disk by prompt likelihood, as class_scores does in memory."""
  model = get_model(dict(name="cappa", image=dict(variant="mu/8", posemb="sincos2d"),
                         text=dict(variant="mu", vocab_size=128, max_len=MAX_LEN)))
  examples = [WORLD.zeroshot_example(i) for i in range(6)]  # labels 0..5: the first 6 classes
  names = WORLD.zeroshot_classes()[:6]
  path = _write_jsonl(tmp_path, [dict(image=e["image"], label=e["label"]) for e in examples])
  image = preprocess_images(np.stack([e["image"] for e in examples]))
  rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
  params = nn.unbox(model.init(rngs, image=image[:1], text=TOK.encode(["a"], MAX_LEN), train=True)["params"])
  mesh = make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    runner = ModelRunner(model, mesh, 8, TOK)
    ev = _build(ZeroShotEvaluator, scoring="likelihood",
                dataset=dict(source="jsonl", path=path, class_names=names, templates=TEMPLATES))
    scores, _ = ev.scores(runner, params)
    prompts = TOK.encode([t.format(c) for c in names for t in TEMPLATES], MAX_LEN)
    want = class_scores(runner, params, image, prompts, len(TEMPLATES), "likelihood")
    np.testing.assert_allclose(scores, want, rtol=1e-5)
    assert ev(runner, params)["top1"] == pytest.approx(np.mean(np.argmax(want, 1) == np.arange(6)))


def test_images_are_center_cropped_and_normalised_with_the_run_preset(tmp_path):
  rng = np.random.default_rng(0)
  pictures = [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8), rng.integers(0, 256, (50, 30, 3), dtype=np.uint8)]
  path = _write_jsonl(tmp_path, [dict(image=p, label=i) for i, p in enumerate(pictures)])
  ev = ZeroShotEvaluator(dict(dataset=dict(source="jsonl", path=path, class_names=["a", "b"])),
                         tokenizer=TOK, max_len=MAX_LEN, data=dict(image_size=24, normalization="clip"))
  got, kept = ev.images.map(lambda x: x, 8)
  want = images_lib.normalize(np.stack([images_lib.resize_center_crop(p, 24) for p in pictures]), "clip")
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(kept, [0, 1])
  assert len(ev.templates) == 80  # clip80 is the default on sets on disk
  shapes_ev = RetrievalEvaluator(dict(num_examples=4), tokenizer=TOK, max_len=MAX_LEN,
                                 data=dict(DATA, normalization="clip"))
  want = images_lib.normalize(np.stack([WORLD.example(i, split="eval")["image"] for i in range(4)]), "clip")
  np.testing.assert_array_equal(shapes_ev.images.map(lambda x: x, 8)[0], want)


def test_corrupt_images_are_skipped_and_counted(tmp_path, clip):
  _, params, mesh, runner = clip
  examples = [WORLD.zeroshot_example(i) for i in range(8)]
  rows = [dict(image=e["image"], label=e["label"], id=i) for i, e in enumerate(examples)]
  rows[2]["image"] = b"not an image"
  rows[5]["image"] = encode(examples[5]["image"], "JPEG")[:200]  # truncated
  builder = write_tfds(tmp_path, "broken", {"validation": rows},
                       dict(image=IMAGE, label=tfds.features.ClassLabel(names=WORLD.zeroshot_classes()), id=ID))
  with jax.set_mesh(mesh):
    for cache_mb in (1024, 0):  # decoded once at build, or streamed at every eval
      ev = _build(ZeroShotEvaluator, dataset=dict(path=builder, templates=TEMPLATES, cache_mb=cache_mb))
      got = ev(runner, params)
      assert got["skipped"] == 2
      scores, kept = ev.scores(runner, params)
      ids = _ids(builder, "validation")
      assert sorted(ids[kept]) == [0, 1, 3, 4, 6, 7]
      labels = ev.labels[kept]
      assert got["top1"] == pytest.approx(np.mean(np.argmax(scores, 1) == labels))


# ---------------------------------------------------------------------------- retrieval

def _brute_force_recall(zimg, ztxt, text_image):
  scores = zimg @ ztxt.T
  out = {}
  for k in (1, 5, 10):
    out[f"i2t_r{k}"] = np.mean([any(text_image[j] == i for j in np.argsort(-scores[i])[:k])
                                for i in range(len(zimg))])
    out[f"t2i_r{k}"] = np.mean([text_image[j] in np.argsort(-scores[:, j])[:k] for j in range(len(ztxt))])
  return out


@pytest.mark.cross_path
def test_retrieval_multi_caption_matches_numpy(sets, clip):
  _, params, mesh, runner = clip
  with jax.set_mesh(mesh):
    ev = _build(RetrievalEvaluator, dataset=dict(path=sets["cap"], split="test"))
    got = ev(runner, params)
    source = tfds.builder_from_directory(sets["cap"]).as_data_source("test")
    records = [source[i] for i in range(len(source))]
    zimg = runner.images(params, preprocess_images(np.stack([r["image"] for r in records])))
    texts = [c.decode() for r in records for c in r["captions"]]
    ztxt = runner.texts(params, TOK.encode(texts, MAX_LEN))
  assert len(texts) == 5 * NUM_CAP
  want = _brute_force_recall(zimg, ztxt, np.repeat(np.arange(NUM_CAP), 5))
  assert set(got) == set(want) | {f"{d}_{m}" for d in ("i2t", "t2i") for m in ("mrr", "map")}
  assert {k: got[k] for k in want} == pytest.approx(want, abs=1e-9)  # MRR / mAP: test_retrieval_ranking_metrics


@pytest.mark.cross_path
def test_retrieval_sources_agree(sets, clip, tmp_path):
  """Plain Sequence(Text), COCO-style Sequence({"text", "id"}) and JSONL + image folder: one result."""
  _, params, mesh, runner = clip
  rows = [dict(image=e["image"], captions=e["references"]) for e in sets["cap_examples"]]
  path = _write_jsonl(tmp_path, rows)
  with jax.set_mesh(mesh):
    plain = _build(RetrievalEvaluator, dataset=dict(path=sets["cap"]))(runner, params)
    coco = _build(RetrievalEvaluator, dataset=dict(path=sets["coco"], split="val"))(runner, params)
    coco_key = _build(RetrievalEvaluator, dataset=dict(path=sets["coco"], split="val",
                                                       caption_key="captions/text"))(runner, params)
    jsonl = _build(RetrievalEvaluator, dataset=dict(source="jsonl", path=path))(runner, params)
  for other in (coco, coco_key, jsonl):
    assert other == pytest.approx(plain, abs=1e-9)


def test_retrieval_skips_corrupt_images_with_their_captions(tmp_path, clip):
  _, params, mesh, runner = clip
  examples = [WORLD.caption_example(i) for i in range(6)]
  rows = [dict(image=e["image"], captions=e["references"][:2]) for e in examples]
  rows[1]["image"] = b"\x89PNG broken"
  path = _write_jsonl(tmp_path, rows)
  os.remove(tmp_path / "images" / "4.png")  # a missing file counts as a corrupt image
  with jax.set_mesh(mesh):
    ev = _build(RetrievalEvaluator, dataset=dict(source="jsonl", path=path))
    got = ev(runner, params)
    keep = [0, 2, 3, 5]
    zimg = runner.images(params, preprocess_images(np.stack([examples[i]["image"] for i in keep])))
    ztxt = runner.texts(params, TOK.encode([c for i in keep for c in examples[i]["references"][:2]], MAX_LEN))
  assert got.pop("skipped") == 2
  want = _brute_force_recall(zimg, ztxt, np.repeat(np.arange(4), 2))
  assert {k: got[k] for k in want} == pytest.approx(want, abs=1e-9)


# ---------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("change, error, match", [
    (dict(path="MISSING"), FileNotFoundError, "does-not-exist"),
    (dict(split="train"), ValueError, r"'train' is not a split .*available: \['validation'\]"),
    (dict(split="validation+trian[:10]"), ValueError, r"'trian' is not a split"),
    (dict(templates="clip81"), ValueError, r"Unknown template set 'clip81'; valid: \['clip80'"),
    (dict(templates=["a photo of a cat."]), ValueError, r"'a photo of a cat\.' must be a string with exactly one"),
    (dict(class_names=["red circle", "blue star"]), ValueError, "2 class_names given but label 'label' .* 64 classes"),
    (dict(class_names="MISSING"), FileNotFoundError, "class_names file .*does-not-exist"),
    (dict(source="webdataset"), ValueError, r"source 'webdataset' is unknown; valid: \['tfds', 'jsonl'\]"),
    (dict(imagekey="image"), ValueError, r"unknown key\(s\) \['imagekey'\]"),
    (dict(image_key="img"), ValueError, r"image_key 'img' is not an image feature .*\['image'\]"),
    (dict(label_key="class"), ValueError, r"label_key 'class' is not a feature .*\['id', 'image', 'label'\]"),
    (dict(label_key="id"), ValueError, r"label 'id' .* has no class names"),
    (dict(path=None, name="no_such_dataset_here", data_dir="DATA_DIR"), ValueError, "no_such_dataset_here"),
])
def test_bad_zeroshot_dataset_fails_at_build(sets, tmp_path, change, error, match):
  dataset = dict(path=sets["cls"], templates=TEMPLATES)
  dataset.update({k: str(tmp_path / "does-not-exist") if v == "MISSING" else
                  str(tmp_path) if v == "DATA_DIR" else v for k, v in change.items()})
  with pytest.raises(error, match=match):
    _build(ZeroShotEvaluator, dataset=dataset)


def test_bad_jsonl_sets_fail_at_build(tmp_path):
  examples = [WORLD.zeroshot_example(i) for i in range(3)]
  path = _write_jsonl(tmp_path, [dict(image=e["image"], label=i) for i, e in enumerate(examples)])
  names = tmp_path / "names.txt"
  names.write_text("red circle\nred square\n\n")
  zeroshot = lambda **ds: _build(ZeroShotEvaluator, dataset=dict(source="jsonl", path=path, **ds))
  with pytest.raises(ValueError, match=r"label 2 of .*set.jsonl:3 is out of range: 2 class names give labels 0..1"):
    zeroshot(class_names=str(names))
  with pytest.raises(ValueError, match="has no class names"):
    zeroshot()
  os.makedirs(tmp_path / "elsewhere")
  with pytest.raises(FileNotFoundError, match=r"elsewhere/images/0.png.*image_root="):
    zeroshot(class_names=["a", "b", "c"], image_root=str(tmp_path / "elsewhere"))
  with pytest.raises(ValueError, match=r"num_examples=0 must be >= 1"):
    _build(ZeroShotEvaluator, num_examples=0, dataset=dict(source="jsonl", path=path, class_names=["a"] * 3))
  (tmp_path / "empty.jsonl").write_text("\n")
  with pytest.raises(ValueError, match="empty.jsonl is empty"):
    _build(RetrievalEvaluator, dataset=dict(source="jsonl", path=str(tmp_path / "empty.jsonl")))
  (tmp_path / "bad.jsonl").write_text('{"image": "images/0.png", "captions": ["a"]}\n{"image": 3}\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:2: needs an image path string under 'image'"):
    _build(RetrievalEvaluator, dataset=dict(source="jsonl", path=str(tmp_path / "bad.jsonl")))
  with pytest.raises(ValueError, match=r"set.jsonl:1 has no 'captions'"):
    _build(RetrievalEvaluator, dataset=dict(source="jsonl", path=path))


def test_unknown_evaluator_setting():
  with pytest.raises(ValueError, match=r"evals.zeroshot: unknown key\(s\) \['datset'\]"):
    _build(ZeroShotEvaluator, datset=dict(path="x"))


def test_bad_caption_sets_fail_at_build(sets):
  with pytest.raises(ValueError, match=r"caption_key 'caption' is not a feature .*\['captions', 'id', 'image'\]"):
    _build(RetrievalEvaluator, dataset=dict(path=sets["cap"], caption_key="caption"))
  with pytest.raises(ValueError, match=r"'captions/id' of .* hold non-text values"):
    _build(RetrievalEvaluator, dataset=dict(path=sets["coco"], split="val", caption_key="captions/id"))
  with pytest.raises(ValueError, match=r"'test' is not a split .*available: \['val'\]"):
    _build(RetrievalEvaluator, dataset=dict(path=sets["coco"]))


def test_registry_names_more_datasets():
  assert evals.get_evaluator("zeroshot_imagenet") is ZeroShotEvaluator
  assert evals.get_evaluator("retrieval_coco") is RetrievalEvaluator
  for bad in ("vqa_v9", "zeroshot_", "zero_shot"):
    with pytest.raises(ValueError, match=f"unknown evaluator '{bad}'.*zeroshot_<label>"):
      evals.get_evaluator(bad)


# ---------------------------------------------------------------------------- a training run

def test_training_run_logs_real_set_evals(sets, tmp_path):
  cfg = tiny_config(total_steps=2, evals=dict(
      zeroshot=dict(every=2, num_examples=16),
      zeroshot_tfds=dict(every=2, dataset=dict(source="tfds", path=sets["cls"], split="validation",
                                               templates=TEMPLATES)),
      retrieval_tfds=dict(every=2, dataset=dict(path=sets["cap"], split="test"))))
  final = train_and_evaluate(cfg, str(tmp_path / "run"))
  series = read_metrics(str(tmp_path / "run"))
  for key in ("eval/zeroshot/top1", "eval/zeroshot/shape_acc", "eval/zeroshot_tfds/top1", "eval/zeroshot_tfds/top5",
              "eval/retrieval_tfds/i2t_r1", "eval/retrieval_tfds/t2i_r10"):
    assert key in series and key in final, key
  assert "eval/zeroshot_tfds/skipped" not in series
  bad = tiny_config(evals=dict(zeroshot_tfds=dict(every=2, dataset=dict(path=sets["cls"], split="train"))))
  with pytest.raises(ValueError, match="'train' is not a split"):
    train_and_evaluate(bad, str(tmp_path / "bad"))
  assert workdir_listing(tmp_path / "bad") is None
