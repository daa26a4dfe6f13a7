"""CapFilt (python -m vljax.capfilt) on random-weight tiny BLIP runs: the output dataset (ArrayRecords the
array_record source and a mixture read, the JSONL of every caption, the counts), decisions at the
threshold, captions a function of (seed, record index) alone, resume to identical files, the host
split, bad input; and the noisy shapes generator's ground truth."""

import collections
import glob
import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_config
from random_workdirs import write_random_workdir
from vljax.capfilt import __main__ as cli, inputs, job as job_lib, noisy_shapes, pipeline, scenes, score
from vljax.data import pipeline as data_pipeline, shapes, tokenizers
from vljax.data.sources import records

BLIP = (dict(decoder=dict(variant="mu", depth=1), fusion=dict(share="blip")),
        {"softmax_contrastive": 1.0, "itm": 1.0, "captioning": 1.0})
ITC_ITM = (dict(fusion=dict(share="none", variant="mu", depth=1)), {"softmax_contrastive": 1.0, "itm": 1.0})
CLIP = ({}, {"softmax_contrastive": 1.0})
PER_IMAGE = 2


def write_workdir(path, kind, seed=0, checkpoint=True):
  """A run of a tiny model with random weights: config.json and a step-0 checkpoint of its params."""
  keys, objectives = kind
  cfg = tiny_config(evals={})
  cfg.model.update(keys)
  cfg.objectives = objectives
  return write_random_workdir(path, cfg, seed, checkpoint)


def write_folder(path):
  """Ten noisy shapes images, a row with two web captions, one with none, a corrupt and a missing image."""
  noisy_shapes.write(path, num_images=10, noise=0.5, image_size=32, progress=False)
  with open(os.path.join(path, "images", "bad.png"), "wb") as f:
    f.write(b"not an image")
  extra = [{"image": "images/000001.png", "caption": ["a red circle", "buy cheap shoes online"]},
           {"image": "images/bad.png", "caption": "a blue star"},
           {"image": "images/000002.png", "caption": ""},
           {"image": "images/missing.png", "caption": "a green heart"}]
  with open(os.path.join(path, noisy_shapes.INDEX_NAME), "a", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in extra)
  return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("capfilt")
  return dict(root=root, blip=write_workdir(str(root / "blip"), BLIP), folder=write_folder(str(root / "folder")))


def settings(data, **overrides):
  values = dict(captioner=data["blip"], filter=data["blip"], input=data["folder"], captions_per_image=PER_IMAGE,
                threshold=0.5, shard_size=4, seed=3)
  return job_lib.Settings(**{**values, **overrides})


@pytest.fixture(scope="module")
def job(data):
  """The job once, uninterrupted: (output dir, summary)."""
  output = str(data["root"] / "out")
  return output, pipeline.run(settings(data), output, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def median(job, data):
  """The job again at the median score: (output dir, threshold, summary), some captions of each decision."""
  threshold = float(np.median([r["itm_score"] for r in read_jsonl(job[0])]))
  output = str(data["root"] / "median")
  return output, threshold, pipeline.run(settings(data, threshold=threshold), output, batch_size=4, progress=False)


def read_jsonl(output):
  rows = []
  for path in sorted(glob.glob(os.path.join(output, "shard-*.jsonl"))):
    with open(path, encoding="utf-8") as f:
      rows += [json.loads(line) for line in f]
  return rows


def files_of(output):
  return {os.path.relpath(p, output): open(p, "rb").read()
          for p in sorted(glob.glob(os.path.join(output, "*"))) if os.path.isfile(p)}


def test_jsonl_holds_every_caption_and_the_counts_add_up(job, data):
  output, summary = job
  rows = read_jsonl(output)
  assert set(rows[0]) == {"image", "index", "caption", "provenance", "itm_score", "decision"}
  per_image = collections.defaultdict(collections.Counter)
  for r in rows:
    per_image[tuple(r["index"])][r["provenance"]] += 1
  # 10 images + the row with two web captions + the row with none; the corrupt and missing ones skipped.
  assert sorted(per_image) == [(i,) for i in range(14) if i not in (11, 13)] and summary["images"] == 12
  assert summary["skipped"] == {"corrupt_image": 1, "missing_image": 1}
  assert all(c["synthetic"] == PER_IMAGE for c in per_image.values())
  assert sum(c["web"] for c in per_image.values()) == 10 + 2
  counts = collections.Counter((r["provenance"], r["decision"]) for r in rows)
  assert {(p, d): summary["counts"][p][d] for p in job_lib.PROVENANCES for d in job_lib.DECISIONS} == \
      {k: counts[k] for k in counts} | {k: 0 for k in {(p, d) for p in job_lib.PROVENANCES
                                                          for d in job_lib.DECISIONS} - set(counts)}
  with open(os.path.join(output, job_lib.SUMMARY_FILE)) as f:
    assert json.load(f) == summary
  assert summary["complete"] and summary["shards"] == summary["shards_done"] == 4  # 14 rows, 4 a shard


def test_decisions_follow_the_threshold(job, median):
  rows = read_jsonl(job[0])
  scores = np.array([r["itm_score"] for r in rows])
  assert np.all((scores > 0) & (scores < 1)) and np.ptp(scores) > 0
  for r in rows:
    assert r["decision"] == ("kept" if r["itm_score"] >= 0.5 else "removed"), r
  # Another threshold: the decisions move with it, the captions and scores do not.
  output, threshold, summary = median
  rows2 = read_jsonl(output)
  assert [(r["caption"], r["itm_score"]) for r in rows2] == [(r["caption"], r["itm_score"]) for r in rows]
  assert all(r["decision"] == ("kept" if r["itm_score"] >= threshold else "removed") for r in rows2)
  assert summary["records"] == np.sum(scores >= threshold) and 0 < summary["records"] < len(rows)


def test_zero_captions_per_image_filters_the_web_captions_alone(job, data):
  output = str(data["root"] / "filter_only")
  summary = pipeline.run(settings(data, captions_per_image=0), output, batch_size=4, progress=False)
  rows = read_jsonl(output)
  web = [r for r in read_jsonl(job[0]) if r["provenance"] == "web"]
  assert {r["provenance"] for r in rows} == {"web"} and summary["counts"]["synthetic"] == {"kept": 0, "removed": 0}
  # The web captions' scores and decisions are those of the job that also captions.
  assert [(r["caption"], r["decision"]) for r in rows] == [(r["caption"], r["decision"]) for r in web]
  np.testing.assert_allclose([r["itm_score"] for r in rows], [r["itm_score"] for r in web], atol=1e-6)


def test_records_hold_the_kept_pairs_with_their_original_image_bytes(median, data):
  output = median[0]
  kept = [r for r in read_jsonl(output) if r["decision"] == "kept"]
  source = records.ArrayRecordSource(output)
  source.check_keys()
  assert len(source) == len(kept) > 0
  for i, row in enumerate(kept):
    raw = records.decode_record(source._source[i])
    record = source[i]
    assert record["caption"] == row["caption"] and raw["provenance"] == row["provenance"]
    assert raw["itm_score"] == row["itm_score"]
    with open(os.path.join(data["folder"], row["image"]), "rb") as f:
      assert record["image"] == f.read()  # not re-encoded


def test_captions_depend_on_the_seed_and_record_not_on_batching(job, data):
  output, _ = job
  rows = read_jsonl(output)
  other = str(data["root"] / "rebatched")
  pipeline.run(settings(data, shard_size=5), other, batch_size=4, progress=False)  # other shards, so other batches
  synthetic = lambda rs: [(r["image"], r["caption"]) for r in rs if r["provenance"] == "synthetic"]  # noqa: E731
  assert synthetic(read_jsonl(other)) == synthetic(rows)
  texts = [c for _, c in synthetic(rows)]
  assert len(set(texts)) > len(texts) // 2  # sampled, not one caption repeated
  reseeded = str(data["root"] / "reseeded")
  pipeline.run(settings(data, seed=4, shard_size=100), reseeded, batch_size=4, progress=False)
  assert synthetic(read_jsonl(reseeded)) != synthetic(rows)


def test_resume_after_an_interruption_gives_identical_files(job, data, monkeypatch):
  output, _ = job
  resumed = str(data["root"] / "resumed")
  flush, calls = pipeline.CapFilt._flush, []

  def dies_in_the_third_batch(self, batch, writer):
    calls.append(writer.shard)
    if len(calls) == 3:
      raise KeyboardInterrupt
    flush(self, batch, writer)
  monkeypatch.setattr(pipeline.CapFilt, "_flush", dies_in_the_third_batch)
  with pytest.raises(KeyboardInterrupt):
    pipeline.run(settings(data), resumed, batch_size=4, progress=False)
  assert sorted(glob.glob(os.path.join(resumed, "*.done.json"))) == [job_lib.shard_path(resumed, 0, ".done.json"),
                                                                      job_lib.shard_path(resumed, 1, ".done.json")]
  assert not os.path.exists(job_lib.shard_path(resumed, 2, ".jsonl"))  # the shard being written: not in place
  calls.clear()
  monkeypatch.setattr(pipeline.CapFilt, "_flush", lambda self, batch, writer: (calls.append(writer.shard),
                                                                               flush(self, batch, writer)))
  pipeline.run(settings(data), resumed, batch_size=4, progress=False)
  assert sorted(set(calls)) == [2, 3]  # finished shards skipped
  original, again = files_of(output), files_of(resumed)
  assert sorted(again) == sorted(original) and all(again[k] == original[k] for k in original)
  assert sorted(os.listdir(resumed)) == sorted(original)  # the interrupted shard's temporary files gone


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_host_split_is_disjoint_and_complete(count):
  for num_shards in (0, 1, 4, 7):
    parts = [job_lib.host_shards(num_shards, p, count) for p in range(count)]
    flat = [k for part in parts for k in part]
    assert sorted(flat) == list(range(num_shards)) and len(flat) == len(set(flat))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
  with pytest.raises(ValueError, match="process_index=2 of process_count=2"):
    job_lib.host_shards(4, 2, 2)


def test_tar_and_array_record_inputs(tmp_path, job):
  """A tar input: one shard per file, records indexed (file, sample); a corrupt tar member counted."""
  png = io.BytesIO()
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png, format="PNG")
  for t in range(2):
    with tarfile.open(tmp_path / f"{t:05d}.tar", "w") as tar:
      for s, (ext, payload) in enumerate([("png", png.getvalue()), ("png", png.getvalue()), ("pdf", b"%PDF")]):
        for name, data_ in ((f"s{s}.{ext}", payload), (f"s{s}.txt", f"caption {t} {s}".encode())):
          info = tarfile.TarInfo(name)
          info.size = len(data_)
          tar.addfile(info, io.BytesIO(data_))
  source = inputs.Input(str(tmp_path), shard_size=100)
  assert source.kind == "webdataset" and source.num_shards == 2
  items = list(source.items(1))
  assert [it.index for it in items] == [(1, 0), (1, 1), (1, 2)]
  assert items[0].record["caption"] == "caption 1 0" and items[2].record == {"skip": "not_an_image", "source": 0}
  output, summary = job
  again = inputs.Input(output, shard_size=3)  # CapFilt's own output as input
  assert again.kind == "array_record" and again.num_records == summary["records"]


def test_a_mixture_with_human_annotated_data_reads_the_output(median, data):
  output = median[0]
  cfg = tiny_config(evals={})
  cfg.data.name = "mixture"
  cfg.data.sources = ({"name": "array_record", "path": output, "weight": 1.0},
                      {"name": "folder", "path": data["folder"], "weight": 1.0})
  cfg.data.workers = 0
  tokenizer = tokenizers.get_tokenizer(cfg.data.tokenizer)
  batches = data_pipeline.make_train_dataset(cfg.data, tokenizer, global_batch_size=16, seed=0)
  batch = next(iter(batches))
  assert batch["image"].shape == (16, 32, 32, 3) and batch["text"].shape == (16, cfg.data.max_len)
  kept = {r["caption"] for r in read_jsonl(output) if r["decision"] == "kept"}
  assert kept & set(tokenizer.decode(batch["text"]))  # some examples come from the CapFilt output


@pytest.mark.slow
def test_a_training_run_reads_the_mixture(median, data, tmp_path):
  from vljax.train import trainer
  output = median[0]
  cfg = tiny_config(evals={}, total_steps=2, checkpoint=dict(every=2, keep=1, async_save=False))
  cfg.data.name = "mixture"
  cfg.data.sources = ({"name": "array_record", "path": output, "weight": 1.0},
                      {"name": "folder", "path": data["folder"], "weight": 1.0})
  trainer.train_and_evaluate(cfg, str(tmp_path / "run"))
  rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  assert max(r["step"] for r in rows) == 2 and all(np.isfinite(r["train/loss"]) for r in rows if "train/loss" in r)


def test_bad_input_is_refused_before_anything_is_written(data, tmp_path, capsys):
  clip = write_workdir(str(tmp_path / "clip"), CLIP, checkpoint=False)
  itc_itm = write_workdir(str(tmp_path / "itc_itm"), ITC_ITM, checkpoint=False)
  out = str(tmp_path / "out")
  cases = [
      (dict(captioner=str(tmp_path / "nowhere")), FileNotFoundError, "is it a vljax workdir"),
      (dict(captioner=itc_itm), ValueError, "lacks an image-grounded caption decoder"),
      (dict(filter=clip), ValueError, "lacks an image-text matching"),
      (dict(captions_per_image=-1), ValueError, "--captions_per_image=-1 is invalid; valid: >= 1, or 0 to filter"),
      (dict(top_p=0.0), ValueError, r"--top_p=0.0 is invalid; valid: in \(0, 1\]"),
      (dict(top_p=1.5), ValueError, r"--top_p=1.5 is invalid"),
      (dict(input=str(tmp_path / "none.jsonl")), FileNotFoundError, "does not exist"),
      (dict(max_len=12), ValueError, r"--max_len=12 is invalid for the captioner; valid: 1\.\.11"),
  ]
  for overrides, error, message in cases:
    with pytest.raises(error, match=message):
      pipeline.run(settings(data, **overrides), out, progress=False)
  assert not os.path.exists(out)
  os.makedirs(out)
  with open(os.path.join(out, "notes.txt"), "w") as f:
    f.write("mine")
  with pytest.raises(ValueError, match="holds other files"):
    pipeline.run(settings(data), out, progress=False)
  assert os.listdir(out) == ["notes.txt"]


def test_an_output_of_another_job_is_refused_untouched(job, data, capsys):
  output, _ = job
  before = files_of(output)
  code = cli.main(["--captioner", data["blip"], "--filter", data["blip"], "--input", data["folder"], "--output",
                   output, "--captions_per_image", str(PER_IMAGE), "--shard_size", "4", "--seed", "3",
                   "--threshold", "0.7", "--no_progress"])
  assert code == 2
  assert "holds another CapFilt job (threshold: 0.5 there, 0.7 now)" in capsys.readouterr().err
  assert files_of(output) == before


def test_the_command_resumes_a_finished_job_and_prints_the_counts(job, data, capsys):
  output, summary = job
  before = files_of(output)
  assert cli.main(["--captioner", data["blip"], "--filter", data["blip"], "--input", data["folder"], "--output",
                   output, "--captions_per_image", str(PER_IMAGE), "--shard_size", "4", "--seed", "3",
                   "--no_progress"]) == 0
  lines = capsys.readouterr().out.splitlines()
  web = summary["counts"]["web"]
  assert lines[1].split()[:3] == ["web", str(web["kept"]), str(web["removed"])]
  assert "corrupt_image: 1, missing_image: 1" in lines[3] and files_of(output) == before


def test_score_against_the_ground_truth(tmp_path):
  data_dir = str(tmp_path / "d")
  noisy_shapes.write(data_dir, num_images=6, noise=0.5, image_size=32, progress=False)
  truth = list(noisy_shapes.read_truth(data_dir).values())
  noisy = [r["noisy"] for r in truth]
  assert 0 < sum(noisy) < 6
  # A filter that removes every noisy web caption and one clean one; synthetic captions: the true one, kept,
  # and a wrong one, removed.
  clean = [i for i, n in enumerate(noisy) if not n]
  rows = []
  for i, r in enumerate(truth):
    removed = r["noisy"] or i == clean[0]
    rows.append(dict(image=r["image"], caption=r["caption"], provenance="web", itm_score=0.2 if removed else 0.8,
                     decision="removed" if removed else "kept"))
    rows.append(dict(image=r["image"], caption=r["true_caption"], provenance="synthetic", itm_score=0.9,
                     decision="kept"))
    rows.append(dict(image=r["image"], caption="buy cheap shoes online", provenance="synthetic", itm_score=0.1,
                     decision="removed"))
  out = tmp_path / "out"
  out.mkdir()
  (out / "shard-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  result = score.score(data_dir, str(out))
  assert result["web"]["recall"] == 1 and result["web"]["precision"] == sum(noisy) / (sum(noisy) + 1)
  assert result["web"]["auc"] == pytest.approx((sum(noisy) * (len(clean) - 1) + 0.5 * sum(noisy)) /
                                               (sum(noisy) * len(clean)))
  assert result["synthetic"]["correct"] == 0.5 and result["synthetic"]["correct_among_kept"] == 1
  assert result["synthetic"]["auc"] == 1 and result["dataset"]["kept_correct"] == 1
  at = {t["threshold"]: t for t in result["thresholds"]}
  assert at[0.5]["web_recall"] == 1 and at[0.2]["web_recall"] == 0
  assert at[0.1]["kept_pairs"] == 3 * 6 and at[0.2]["kept_pairs"] == 2 * 6  # the wrong synthetic ones at 0.1


def test_noisy_shapes_ground_truth(tmp_path):
  """Noisy captions disagree with their scene in every wording the world has; clean ones are the world's."""
  data = noisy_shapes.NoisyShapes(noise=0.6, image_size=32)
  rows = [data.row(i) for i in range(120)]
  kinds = collections.Counter(r["noise"] for r in rows)
  assert set(kinds) == {"", *noisy_shapes.KINDS} and 0.45 < 1 - kinds[""] / len(rows) < 0.75
  for r in rows:
    assert scenes.describes(r["true_caption"], r["objects"])
    assert scenes.describes(r["caption"], r["objects"]) != r["noisy"], r
    assert (r["caption"] == r["true_caption"]) != r["noisy"]
    if r["noise"] == "swapped":  # one colour or shape word changed, the rest kept
      a, b = r["caption"].split(), r["true_caption"].split()
      assert len(a) == len(b) and sum(x != y for x, y in zip(a, b) if x not in ("a", "an")) == 1
  # The listing of a scene's captions holds every caption the world draws, and not a wrong one.
  world = shapes.ShapesWorld(seed=1, image_size=32)
  for i in range(300):
    ex = world.example(i, render=False)
    assert scenes.describes(ex["caption"], ex["objects"]), ex
  a, b = dict(shape="circle", color="red", size="small", row=0, col=0), dict(shape="star", color="blue", size="large",
                                                                             row=0, col=2)
  assert scenes.describes("a small red circle to the left of a blue star", [a, b])
  assert not scenes.describes("a small red circle to the right of a blue star", [a, b])
  assert not scenes.describes("a large red circle to the left of a blue star", [a, b])
  assert not scenes.describes("a red circle", [a, b])
  noisy_shapes.write(str(tmp_path / "d"), num_images=3, noise=0.6, image_size=32, progress=False)
  truth = noisy_shapes.read_truth(str(tmp_path / "d"))
  assert list(truth) == [f"images/{i:06d}.png" for i in range(3)]
  assert [r["caption"] for r in truth.values()] == [data.row(i)["caption"] for i in range(3)]
