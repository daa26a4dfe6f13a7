"""Real data sources (tfds, array_record, webdataset tar shards, JSONL/CSV folders, mixtures):
what was written is what is read, host splits, exact resume, bad samples, bad configs."""

import json
import os
import tarfile

import numpy as np
import pytest
from absl import flags

from real_data import (encode, shapes_pairs, write_array_records, write_folder, write_tar_shards,
                       write_tfds)
from vljax.data import pipeline, sources
from vljax.data.sources import files, skips, webdataset
from vljax.data.tokenizers import ShapesTokenizer

if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags
  flags.FLAGS.mark_as_parsed()

N = 32  # examples written per format
BASE = dict(image_size=32, max_len=pipeline.DEFAULT_MAX_LEN, num_threads=2, prefetch=2)
TOK = ShapesTokenizer()


@pytest.fixture(scope="module")
def pairs():
  out = shapes_pairs(N, image_size=48)
  assert len({p["caption"] for p in out}) == N  # captions identify examples below
  return out


@pytest.fixture(scope="module")
def data(tmp_path_factory, pairs):
  """data.path of each format, all holding `pairs` (folders with JPEG, shards with PNG images)."""
  root = tmp_path_factory.mktemp("real")
  write_tar_shards(root / "tar", pairs, per_shard=8, fmt="PNG")
  write_array_records(root / "ar", pairs, records_per_file=10, fmt="PNG")
  return {"webdataset": str(root / "tar" / "shard-{00000..00003}.tar"),
          "array_record": str(root / "ar"),
          "folder": write_folder(root / "jsonl", pairs, fmt="PNG"),
          "csv": write_folder(root / "csv", pairs, index="csv", image_key="file", caption_key="text", fmt="PNG")}


def _cfg(name, path, **kw):
  return dict(BASE, name=name, path=path, **kw)


def _take(ds, n):
  it = iter(ds)
  try:
    return [next(it) for _ in range(n)]
  finally:
    it.close()


def _captions(batches):
  return [c for b in batches for c in TOK.decode(b["text"])]


def _eval_all(cfg, batch=8):
  """Every (caption, image) of one in-order pass."""
  out = []
  for b in pipeline.make_eval_dataset(cfg, TOK, global_batch_size=batch):
    out.extend(zip(TOK.decode(b["text"]), b["image"]))
  return out


def _check_exact(read, pairs, ordered=True):
  """Center crops at the written size are the written pixels (PNG), captions the written ones."""
  by_caption = {p["caption"]: p["image"] for p in pairs}
  assert sorted(c for c, _ in read) == sorted(by_caption)
  if ordered:
    assert [c for c, _ in read] == [p["caption"] for p in pairs]
  for caption, image in read:
    np.testing.assert_array_equal(image, pipeline.preprocess_images(by_caption[caption]))


@pytest.mark.parametrize("fmt", ["webdataset", "array_record", "folder"])
def test_each_source_reads_back_what_was_written(data, pairs, fmt):
  _check_exact(_eval_all(_cfg(fmt, data[fmt], image_size=48)), pairs)


def test_csv_folder_with_other_column_names(data, pairs):
  _check_exact(_eval_all(_cfg("folder", data["csv"], image_size=48, image_key="file", caption_key="text")), pairs)


@pytest.mark.parametrize("fmt", ["webdataset", "array_record", "folder"])
def test_training_epoch_is_a_shuffled_permutation(data, pairs, fmt):
  batches = _take(pipeline.make_train_dataset(_cfg(fmt, data[fmt]), TOK, global_batch_size=8, seed=0), 2 * N // 8)
  first, second = _captions(batches[:N // 8]), _captions(batches[N // 8:])
  assert sorted(first) == sorted(second) == sorted(p["caption"] for p in pairs)
  assert first != [p["caption"] for p in pairs] and first != second  # shuffled, and again each epoch
  b = batches[0]
  assert b["image"].shape == (8, 32, 32, 3) and b["image"].dtype == np.float32
  assert b["text"].dtype == np.int32 and b[pipeline.SKIPPED_KEY].tolist() == [0] * len(skips.SKIP_REASONS)


def test_tfds_sequence_captions_and_class_labels(tmp_path, pairs):
  tfds = pytest.importorskip("tensorflow_datasets")
  names = ["circle", "square", "star"]
  examples = [dict(image=p["image"], captions=[p["caption"], f"a photo of a {names[i % 3]}"], label=i % 3)
              for i, p in enumerate(pairs)]
  features = dict(image=tfds.features.Image(), captions=tfds.features.Sequence(tfds.features.Text()),
                  label=tfds.features.ClassLabel(names=names))
  path = write_tfds(tmp_path, "shapes_pairs", {"train": examples, "test": examples[:8]}, features)
  # tfds shuffles on write: compare as sets. Eval takes the first caption of each sequence.
  _check_exact(_eval_all(_cfg("tfds", path, image_size=48, caption_key="captions")), pairs, ordered=False)
  assert len(_eval_all(_cfg("tfds", path, split="test", caption_key="captions"))) == 8
  # Training picks either caption, from the seed: same run, same picks.
  cfg = _cfg("tfds", path, caption_key="captions")
  picks = [_captions(_take(pipeline.make_train_dataset(cfg, TOK, global_batch_size=8, seed=0), 8)) for _ in range(2)]
  assert picks[0] == picks[1]
  second = sum(c.startswith("a photo of a ") and c.split()[-1] in names and len(c.split()) == 5 for c in picks[0])
  assert 0.25 < second / len(picks[0]) < 0.75
  by_label = {c for c, _ in _eval_all(_cfg("tfds", path, caption_key="label", label_template="a photo of a {}"))}
  assert by_label == {f"a photo of a {n}" for n in names}
  with pytest.raises(ValueError, match="'caption'.*captions"):
    sources.check(_cfg("tfds", path))
  with pytest.raises(ValueError, match="'validation'.*test"):
    sources.check(_cfg("tfds", path, split="validation", caption_key="captions"))


@pytest.mark.parametrize("fmt", ["webdataset", "array_record"])
def test_two_hosts_read_disjoint_halves_covering_everything(data, pairs, fmt):
  cfg = _cfg(fmt, data[fmt])
  seen = [_captions(_take(pipeline.make_train_dataset(cfg, TOK, global_batch_size=8, seed=0, process_index=p,
                                                       process_count=2), N // 8)) for p in range(2)]
  assert len(seen[0]) == len(seen[1]) == N // 2
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == sorted(p["caption"] for p in pairs)


def test_fewer_shards_than_hosts_is_an_error(data):
  with pytest.raises(ValueError, match="4 shard.*5 hosts"):
    pipeline.make_train_dataset(_cfg("webdataset", data["webdataset"]), TOK, global_batch_size=10, seed=0,
                                process_index=0, process_count=5)


def test_mixture_follows_the_weights(tmp_path):
  red = [dict(image=np.full((40, 40, 3), (200, 0, 0), np.uint8), caption="a red circle")] * 16
  blue = [dict(image=np.full((40, 40, 3), (0, 0, 200), np.uint8), caption="a blue square")] * 16
  cfg = dict(BASE, name="mixture", sources=(
      dict(name="array_record", path=write_array_records(tmp_path / "red", red)[0], weight=3.0),
      dict(name="webdataset", path=write_tar_shards(tmp_path / "blue", blue, per_shard=4)[0], weight=1.0)))
  captions = _captions(_take(pipeline.make_train_dataset(cfg, TOK, global_batch_size=16, seed=0), 8))
  assert set(captions) == {"a red circle", "a blue square"}
  assert abs(captions.count("a red circle") / len(captions) - 0.75) <= 0.02
  with pytest.raises(ValueError, match=r"sources\[1\].*'wieght'"):
    sources.check(dict(cfg, sources=(cfg["sources"][0], dict(name="folder", path="x", wieght=1))))
  with pytest.raises(ValueError, match="needs data.sources"):
    sources.check(dict(cfg, sources=()))


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert set(x) == set(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def _resume_matches(cfg, before, after):
  it = iter(pipeline.make_train_dataset(cfg, TOK, global_batch_size=8, seed=3))
  for _ in range(before):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # what the checkpoint keeps
  expected = [next(it) for _ in range(after)]
  it.close()
  fresh = iter(pipeline.make_train_dataset(cfg, TOK, global_batch_size=8, seed=3))
  fresh.set_state(state)
  got = [next(fresh) for _ in range(after)]
  fresh.close()
  _assert_same(got, expected)


def test_array_record_resume_is_exact(data):
  # 5 batches: across the first epoch's end (32 examples), so the reshuffle is covered too.
  _resume_matches(_cfg("array_record", data["array_record"]), before=3, after=3)


def test_webdataset_resume_is_exact_mid_shard(data):
  # batch 8 over shards of 8 with 2 shards interleaved: the state holds two half-read shards.
  _resume_matches(_cfg("webdataset", data["webdataset"], cycle_length=2), before=3, after=3)


def test_resume_is_exact_with_worker_processes(data):
  _resume_matches(_cfg("webdataset", data["webdataset"], workers=2, cycle_length=2), before=3, after=2)


def _bad_shards(directory, shards=4, good=8):
  """Shards of `good` samples with a corrupt image and an empty caption in the middle of each."""
  samples = shapes_pairs(shards * good, image_size=40)
  paths = []
  for s in range(shards):
    chunk = [dict(p) for p in samples[s * good:(s + 1) * good]]
    chunk.insert(good // 2, dict(image=b"\xff\xd8\xff not a jpeg", caption="a broken image"))
    chunk.insert(1, dict(image=samples[0]["image"], caption="   "))
    for i, sample in enumerate(chunk):
      sample["key"] = f"{s:03d}{i:05d}"
    paths += write_tar_shards(directory, chunk, per_shard=len(chunk), name=f"bad-{s:05d}.tar")
  return paths


def test_skip_counts_come_out_of_worker_processes_exactly(tmp_path):
  """Every shard has 8 good and 2 bad samples, batch 8: after k whole shards, 2k skipped, whoever read them."""
  _bad_shards(tmp_path)
  for workers in (0, 2):
    cfg = _cfg("webdataset", str(tmp_path / "bad-*.tar"), workers=workers, cycle_length=1)
    batches = _take(pipeline.make_train_dataset(cfg, TOK, global_batch_size=8, seed=0), 6)
    counts = np.sum([b[pipeline.SKIPPED_KEY] for b in batches], axis=0)
    assert skips.counts_dict(counts) == {"corrupt_image": 6, "empty_caption": 6}, workers
    assert "a broken image" not in _captions(batches)


def test_tar_reader_counts_broken_shards(tmp_path, pairs):
  good = write_tar_shards(tmp_path, pairs[:3], per_shard=3, name="good.tar", fmt="PNG")[0]
  data = open(good, "rb").read()
  with tarfile.open(good) as tar:
    third = tar.getmember(f"{2:09d}.png")
  (tmp_path / "cut.tar").write_bytes(data[:third.offset_data + 100])
  (tmp_path / "empty.tar").write_bytes(b"")
  (tmp_path / "junk.tar").write_bytes(b"\x00junk" * 50)
  with tarfile.open(tmp_path / "mixed.tar", "w") as tar:
    tar.add(good, arcname="README.md")
  reasons = lambda name: [r.get("skip") for r in webdataset.read_shard(str(tmp_path / name))]  # noqa: E731
  assert reasons("good.tar") == [None] * 3
  assert reasons("cut.tar") == [None, None, "truncated_shard"]
  assert reasons("empty.tar") == ["empty_shard"]
  assert reasons("junk.tar") == ["empty_shard"]
  assert reasons("mixed.tar") == ["not_an_image"]


def test_a_source_with_no_usable_sample_is_an_error_not_a_hang(tmp_path):
  broken = [dict(image=b"garbage", caption="a red circle")] * 6
  write_tar_shards(tmp_path / "tar", broken, per_shard=3)
  write_array_records(tmp_path / "ar", broken)
  for name, path in (("webdataset", str(tmp_path / "tar")), ("array_record", str(tmp_path / "ar"))):
    with pytest.raises(ValueError, match="no usable example.*corrupt_image"):
      _take(pipeline.make_train_dataset(_cfg(name, path), TOK, global_batch_size=4, seed=0), 1)
    with pytest.raises(ValueError, match="no usable example"):
      _take(pipeline.make_eval_dataset(_cfg(name, path), TOK, global_batch_size=4), 1)


def test_folder_rows_with_missing_files_or_bad_json_are_skipped(tmp_path, pairs):
  samples = [dict(p) for p in pairs[:8]]
  samples[2]["image"] = None  # listed, never written
  index = write_folder(tmp_path, samples)
  with open(index) as f:
    lines = f.readlines()
  with open(index, "w") as f:  # (bad samples after the last good one of a finite pass go uncounted)
    f.writelines(lines[:4] + ["{not json\n"] + lines[4:])
  read = pipeline.make_eval_dataset(_cfg("folder", index), TOK, global_batch_size=16)
  (batch,) = list(read)
  assert len(batch["text"]) == 7
  assert skips.counts_dict(batch[pipeline.SKIPPED_KEY]) == {"missing_image": 1, "bad_record": 1}


@pytest.mark.parametrize("change, error, message", [
    (dict(name="laion"), ValueError, "'laion'.*webdataset"),
    (dict(path="/nonexistent/shards"), FileNotFoundError, "/nonexistent/shards"),
    (dict(path="{root}/tar/nothing-*.tar"), FileNotFoundError, "nothing-.*matches no file"),
    (dict(path="{root}/tar/shard-{{00000..00009}}.tar"), FileNotFoundError, "shard-00004.tar"),
    (dict(normalization="openai"), ValueError, "'openai'.*clip"),
    (dict(crop_scale=(0.5, 2.0)), ValueError, "crop_scale"),
    (dict(format="vlm", caption_key="", question_key="", answer_key=""), ValueError,
     "data.format='vlm' needs caption, question-answer or conversation chunks"),
    (dict(name="folder", path="{root}/jsonl/captions.jsonl", caption_key="text"), ValueError,
     "caption_key='text'.*columns.*caption"),
    (dict(name="array_record", path="{root}/ar", image_key="jpg"), ValueError, "image_key='jpg'"),
    (dict(name="mixture"), ValueError, "needs data.sources"),
    (dict(name="mixture", sources=(dict(name="shapes", path="x"),)), ValueError, "'shapes'.*tfds"),
])
def test_bad_data_configs_fail_before_any_compute(data, change, error, message):
  root = os.path.dirname(data["array_record"])
  change = {k: v.format(root=root) if isinstance(v, str) else v for k, v in change.items()}
  cfg = dict(_cfg("webdataset", data["webdataset"]), **change)
  with pytest.raises(error, match=message):
    pipeline.check_data_config(cfg)


def test_unknown_normalization_for_shapes_too():
  with pytest.raises(ValueError, match="'openai'"):
    pipeline.check_data_config(dict(name="shapes", normalization="openai"))
  pipeline.check_data_config(dict(name="shapes"))


def test_brace_expansion():
  assert files.expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
  assert files.expand_braces("{a,b}/{0..1}") == ["a/0", "a/1", "b/0", "b/1"]
  assert files.expand_braces("plain{x}.tar") == ["plain{x}.tar"]
  assert files.expand_braces("s-{9..11}") == ["s-9", "s-10", "s-11"]


def test_train_crops_follow_seed_and_index(data):
  cfg = _cfg("array_record", data["array_record"])
  a, b = (_take(pipeline.make_train_dataset(cfg, TOK, global_batch_size=8, seed=s), 1)[0] for s in (0, 0))
  c = _take(pipeline.make_train_dataset(cfg, TOK, global_batch_size=8, seed=1), 1)[0]
  _assert_same([a], [b])
  assert not np.array_equal(a["image"], c["image"])


def test_skipped_counts_reach_metrics_and_survive_resume():
  totals = skips.SkipTotals({"corrupt_image": 2})
  batch = {"image": 0, pipeline.SKIPPED_KEY: np.array([1, 0, 0, 3] + [0] * (len(skips.SKIP_REASONS) - 4))}
  assert set(totals.pop(batch)) == {"image"} and totals.seen
  assert totals.totals() == dict(dict.fromkeys(skips.SKIP_REASONS, 0), corrupt_image=3, empty_caption=3)
  assert "6 bad sample(s)" in totals.warning(10, totals.totals())
  assert totals.warning(11, totals.totals()) is None  # nothing new
  with pytest.raises(ValueError, match="'cosmic_ray'"):
    skips.SkipTotals({"cosmic_ray": 1})


def test_jpeg_sources_decode(tmp_path, pairs):
  """JPEG (lossy) through the whole pipeline: close to the original pixels."""
  index = write_folder(tmp_path, pairs[:4], fmt="JPEG")
  read = _eval_all(_cfg("folder", index, image_size=48))
  for (caption, image), p in zip(read, pairs[:4]):
    assert caption == p["caption"]
    assert np.abs(image - pipeline.preprocess_images(p["image"])).mean() < 0.05
  assert len(encode(pairs[0]["image"])) > 0


def _fuzz_shards(directory):
  """7 shards: 96 good JPEG samples and exactly 9 bad things (reason -> count in FUZZ_SKIPS).

  Bad samples sit between good ones, so each is met before some good sample of its shard; the
  truncated shard's cut and the empty shard are counted when met.
  """
  good = [dict(p) for p in shapes_pairs(96, image_size=48)]
  jpeg = encode(good[0]["image"])
  bad = {
      0: {5: dict(image=b"\xff\xd8\xff\xe0 garbage", caption="a corrupt image"), 10: dict(image=jpeg, caption="")},
      1: {3: dict(image=jpeg[:len(jpeg) // 2], caption="a truncated image"),
          8: dict(image=jpeg, caption=" \n ")},
      2: {4: dict(image=None, caption="a pdf", extra=[("pdf", b"%PDF-1.4 not an image")]),
          9: dict(key="README", image=None, txt=False, extra=[("md", b"# not a sample")])},
      3: {6: dict(image=None, caption="a caption without its image")},
  }
  paths = []
  for s, name in enumerate(("fuzz-0", "fuzz-2", "fuzz-4", "fuzz-5", "fuzz-6")):  # sorted last: a good one
    chunk = good[16 * s:16 * (s + 1)]
    for pos, sample in sorted(bad.get(s, {}).items()):
      chunk.insert(pos, sample)
    paths += write_tar_shards(directory, chunk, per_shard=len(chunk), name=f"{name}.tar")
  cut = write_tar_shards(directory, good[80:] + [good[0]], per_shard=17, name="fuzz-1.tar")[0]
  with tarfile.open(cut) as tar:
    last_image = [m for m in tar.getmembers() if m.name.endswith(".jpg")][-1]
  with open(cut, "r+b") as f:
    f.truncate(last_image.offset_data + len(jpeg) // 3)
  (directory / "fuzz-3.tar").write_bytes(b"")
  return paths + [cut, str(directory / "fuzz-3.tar")]


FUZZ_SKIPS = dict(corrupt_image=2, empty_caption=2, not_an_image=2, missing_image=1, truncated_shard=1,
                  empty_shard=1)


def test_fuzz_reader_meets_exactly_the_planted_bad_samples(tmp_path):
  _fuzz_shards(tmp_path)
  cfg = _cfg("webdataset", str(tmp_path / "fuzz-*.tar"))
  (batch,) = list(pipeline.make_eval_dataset(cfg, TOK, global_batch_size=200))  # in file order
  assert len(batch["text"]) == 96
  assert skips.counts_dict(batch[pipeline.SKIPPED_KEY]) == FUZZ_SKIPS


@pytest.mark.slow
def test_fuzz_training_run_skips_and_reports_exactly_the_bad_samples(tmp_path, caplog):
  """A tiny training run through broken shards: no crash, data/skipped == 9 after one epoch (96 good
  samples = 6 steps of 16), the same after a resume, and a warning naming the reasons."""
  from conftest import tiny_config
  from vljax.metrics import read_metrics
  from vljax.train.trainer import train_and_evaluate

  shards = _fuzz_shards(tmp_path / "shards")
  pattern = str(tmp_path / "shards" / "fuzz-*.tar")
  # One shard at a time in the seed's order: an epoch's skips are all reported by its last batch
  # when its last shard ends with a good sample (not the truncated or the empty one).
  seed = next(s for s in range(50) if pipeline.shard_sequence(webdataset.shard_paths(pattern),
                                                              pipeline.source_seed(s, 0))[6] in shards[:5])

  def config(total_steps):
    cfg = tiny_config(evals={}, seed=seed, total_steps=total_steps)
    cfg.data.name, cfg.data.path, cfg.data.cycle_length = "webdataset", pattern, 1
    return cfg

  with caplog.at_level("WARNING"):
    train_and_evaluate(config(6), str(tmp_path / "full"))
  full = read_metrics(str(tmp_path / "full"))["data/skipped"]
  assert sorted(full) == list(range(1, 7)) and full[6] == sum(FUZZ_SKIPS.values())
  assert all(full[s] <= full[s + 1] for s in range(1, 6))
  warnings = [r.getMessage() for r in caplog.records if "bad sample(s) skipped" in r.getMessage()]
  assert len(warnings) == 2 and "by step 1 " in warnings[0]  # the first, then the last step's
  assert all(f"{reason}: {count}" in warnings[-1] for reason, count in FUZZ_SKIPS.items())
  train_and_evaluate(config(3), str(tmp_path / "part"))
  train_and_evaluate(config(6), str(tmp_path / "part"))  # resumes at step 3: count from the checkpoint
  part = read_metrics(str(tmp_path / "part"))
  assert part["data/skipped"] == full
  assert part["train/loss"] == read_metrics(str(tmp_path / "full"))["train/loss"]  # same batches after resume


def test_webdataset_shards_on_an_object_store(tmp_path, pairs, monkeypatch):
  # gs://bucket/... is served from tmp_path/store/bucket/... through etils' mock backend, so only
  # code that goes through epath finds the shards (a plain open or glob of gs:// finds nothing).
  from etils.epath import testing as epath_testing

  store = str(tmp_path / "store")
  write_tar_shards(tmp_path / "store" / "bucket" / "laion", pairs, per_shard=8, fmt="PNG")
  local = lambda path: os.fspath(path).replace("gs://", store + "/")  # noqa: E731
  on_store = lambda fn: lambda original, path, *a, **k: fn(original(local(path), *a, **k))  # noqa: E731
  same = lambda x: x  # noqa: E731
  mocks = {name: on_store(same) for name in ("open", "exists", "isdir", "listdir", "stat")}
  mocks["glob"] = on_store(lambda found: [p.replace(store + "/", "gs://") for p in found])
  monkeypatch.chdir(tmp_path)
  with epath_testing.mock_epath(**mocks):
    assert files.resolve_files("gs://bucket/laion", "test", suffix=".tar") == [
        f"gs://bucket/laion/shard-{i:05d}.tar" for i in range(4)]
    assert len(files.resolve_files("gs://bucket/laion/*.tar", "test")) == 4
    _check_exact(_eval_all(_cfg("webdataset", "gs://bucket/laion/shard-{00000..00003}.tar", image_size=48)), pairs)
    with pytest.raises(FileNotFoundError, match="matches no file"):
      files.resolve_files("gs://bucket/laion/*.tgz", "test")


def test_crop_scale_default_is_one_constant():
  from vljax import config
  assert sources.crop_scale({}) == tuple(config.base_config().data.crop_scale) == config.CROP_SCALE
