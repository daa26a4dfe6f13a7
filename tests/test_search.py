"""Image search (python -m vljax.search) on a random-weight tiny CLIP run: indexing a folder (a corrupt
file skipped and counted) and the shapes world, an indexed image finding itself, chunked exact search
equal to one matrix product, resume to identical files, refusals, the contact sheet."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_config
from random_workdirs import write_random_workdir
from vljax.data import shapes
from vljax.search import __main__ as cli, exact, index as index_lib, query, sheet, store

FOLDER_IMAGES = 20
SHARD, BATCH = 8, 8  # 21 files: shards of 8, 8 and 5, the last batch of each shard padded


def write_folder(path):
  """20 shapes scenes as PNGs of several sizes (some not square), in two directories, plus a corrupt
  .png and a text file that is not indexed."""
  world = shapes.ShapesWorld(seed=5, image_size=48)
  for i in range(FOLDER_IMAGES):
    im = Image.fromarray(world.example(i)["image"])
    if i % 3 == 1:
      im = im.resize((64, 40))
    sub = os.path.join(path, "b" if i >= 10 else "a")
    os.makedirs(sub, exist_ok=True)
    im.save(os.path.join(sub, f"{i:03d}.png"))
  with open(os.path.join(path, "a", "bad.png"), "wb") as f:
    f.write(b"not an image")
  with open(os.path.join(path, "notes.txt"), "w") as f:
    f.write("not indexed")
  return path


def settings(data, out, **overrides):
  values = dict(workdir=data["clip"], images=data["folder"], index=str(data["root"] / out), shard_size=SHARD,
                batch_size=BATCH)
  return index_lib.Settings(**{**values, **overrides})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("search")
  return dict(root=root, clip=write_random_workdir(str(root / "clip"), tiny_config(evals={})),
              folder=write_folder(str(root / "folder")))


@pytest.fixture(scope="module")
def folder_index(data):
  """The folder indexed once, uninterrupted: (its directory, manifest)."""
  s = settings(data, "folder_index")
  return s.index, index_lib.run(s, progress=False)


def read_files(out):
  return {name: open(os.path.join(out, name), "rb").read() for name in sorted(os.listdir(out))}


def test_folder_index_holds_every_readable_image(folder_index, data):
  out, manifest = folder_index
  assert manifest["count"] == FOLDER_IMAGES and manifest["items"] == FOLDER_IMAGES + 1
  assert manifest["skipped"] == {"corrupt_image": 1}
  assert manifest["workdir"] == data["clip"] and manifest["step"] == 0 and manifest["width"] == 16
  assert manifest["source"] == data["folder"] and manifest["dtype"] == "float32" and manifest["complete"]
  assert sorted(os.listdir(out)) == [store.EMBEDDINGS, store.IDS, store.MANIFEST]  # shards removed
  saved, embeddings, ids = store.open_index(out)
  assert saved == manifest and embeddings.shape == (FOLDER_IMAGES, 16) and embeddings.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
  expected = sorted(os.path.join(data["folder"], d, f"{i:03d}.png") for i in range(FOLDER_IMAGES)
                    for d in ("a", "b") if (d == "b") == (i >= 10))
  assert ids == expected
  assert len({tuple(row) for row in np.round(embeddings, 5)}) == FOLDER_IMAGES  # every image its own row


def test_rerun_of_a_complete_index_changes_nothing(folder_index, data):
  out, manifest = folder_index
  before = read_files(out)
  assert index_lib.run(settings(data, "folder_index"), progress=False) == manifest
  assert read_files(out) == before


def test_indexed_image_finds_itself(folder_index, tmp_path):
  out, _ = folder_index
  _, embeddings, ids = store.open_index(out)
  for target in (ids[0], ids[13]):
    hits, path = query.run(out, image=target, k=3, sheet=str(tmp_path / "sheet.png"))
    assert hits[0].id == target and hits[0].rank == 1
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    others = np.delete(embeddings, ids.index(target), axis=0) @ embeddings[ids.index(target)]
    assert hits[1].score == pytest.approx(others.max(), abs=1e-5)  # the runner-up is the best other image
    assert path == str(tmp_path / "sheet.png")


def test_text_query_ranks_every_image_when_k_exceeds_the_count(folder_index):
  out, _ = folder_index
  searcher = query.Searcher(out)
  q = searcher.embed(text="a red circle left of a blue star")
  assert q.shape == (16,) and np.linalg.norm(q) == pytest.approx(1.0, rel=1e-5)
  hits = searcher.search(q, k=50)
  assert [h.rank for h in hits] == list(range(1, FOLDER_IMAGES + 1))
  np.testing.assert_allclose([h.score for h in hits], np.sort(searcher.embeddings @ q)[::-1], rtol=1e-6)
  assert sorted(h.id for h in hits) == sorted(searcher.ids)


def one_shot(embeddings, q, k):
  """The reference: every row scored at once, a full sort by score then row."""
  scores = exact.scores(embeddings, q)
  np.testing.assert_allclose(scores, embeddings @ q, rtol=0, atol=1e-6)  # the matrix product, to BLAS's last bits
  order = np.lexsort((np.arange(len(scores)), -scores))[:k]
  return order, scores[order]


@pytest.mark.parametrize("chunk_rows", [1, 7, 10, 33, 100, 1000])
def test_chunked_search_equals_one_matrix_product(chunk_rows):
  rng = np.random.default_rng(0)
  embeddings = rng.normal(size=(100, 12)).astype(np.float32)
  embeddings[[40, 3, 77, 90]] = embeddings[55]  # five rows tie, across chunks
  embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
  for q in (embeddings[55], rng.normal(size=12).astype(np.float32)):
    for k in (1, 3, 5, 10, 100, 150):
      rows, scores = exact.search(embeddings, q, k, chunk_rows)
      want_rows, want_scores = one_shot(embeddings, q, k)
      np.testing.assert_array_equal(rows, want_rows)
      np.testing.assert_array_equal(scores, want_scores)
  rows, _ = exact.search(embeddings, embeddings[55], 3, chunk_rows)
  assert rows.tolist() == [3, 40, 55]  # the tie goes to the earliest rows, whatever the chunks


def test_query_form_rows_are_scored_by_their_best_query():
  rng = np.random.default_rng(1)
  embeddings = rng.normal(size=(30, 4, 8)).astype(np.float32)
  q = rng.normal(size=8).astype(np.float32)
  for chunk_rows in (4, 30):
    rows, scores = exact.search(embeddings, q, 5, chunk_rows)
    want = np.max(embeddings @ q, axis=1)
    np.testing.assert_array_equal(rows, np.argsort(-want, kind="stable")[:5])
    np.testing.assert_allclose(scores, np.sort(want)[::-1][:5], rtol=1e-6)


def test_shapes_source_index(data):
  s = settings(data, "shapes_index", images="shapes:12", shard_size=5)
  manifest = index_lib.run(s, progress=False)
  assert manifest["count"] == 12 and manifest["source"] == "shapes:12" and manifest["skipped"] == {}
  _, embeddings, ids = store.open_index(s.index)
  assert ids == [f"shapes:{i}" for i in range(12)]
  # The rows are the scenes the run's world renders for evaluation, embedded as one batch.
  searcher = query.Searcher(s.index)
  world = shapes.ShapesWorld(image_size=32)
  direct = searcher.embedder.images(np.stack([world.example(i, "eval")["image"] for i in range(12)]))
  np.testing.assert_allclose(embeddings, direct, atol=1e-5)
  hits = searcher.search(embeddings[7], k=2)
  assert hits[0].id == "shapes:7" and hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_float16_index_rounds_the_float32_one(folder_index, data):
  s = settings(data, "half_index", dtype="float16")
  manifest = index_lib.run(s, progress=False)
  assert manifest["dtype"] == "float16"
  _, half, _ = store.open_index(s.index)
  _, full, _ = store.open_index(folder_index[0])
  assert half.dtype == np.float16
  np.testing.assert_array_equal(half, full.astype(np.float16))


class Interrupted(Exception):
  pass


def test_interrupted_index_resumes_to_the_same_bytes(folder_index, data, monkeypatch):
  s = settings(data, "resumed_index")
  write_shard = store.write_shard
  calls = []

  def fail_after_first(*args):
    if calls:
      raise Interrupted("the second shard is never written")
    calls.append(args[1])
    write_shard(*args)
  monkeypatch.setattr(store, "write_shard", fail_after_first)
  with pytest.raises(Interrupted):
    index_lib.run(s, progress=False)
  assert store.is_done(s.index, 0) and not store.is_done(s.index, 1)
  assert not store.read_manifest(s.index)["complete"]
  with pytest.raises(ValueError, match=r"is incomplete \(1 shard\(s\) of 21 images finished\); rerun"):
    store.open_index(s.index)
  monkeypatch.setattr(store, "write_shard", write_shard)
  embed_shard, embedded = index_lib.embed_shard, []

  def recording(embedder, source, items, *args):
    embedded.append(items.start)
    return embed_shard(embedder, source, items, *args)
  monkeypatch.setattr(index_lib, "embed_shard", recording)
  index_lib.run(s, progress=False)
  assert embedded == [SHARD, 2 * SHARD]  # the finished shard is not embedded again
  assert read_files(s.index) == read_files(folder_index[0])


def test_refusals(folder_index, data, tmp_path):
  out, _ = folder_index
  with pytest.raises(FileNotFoundError, match=r"--images '.*nowhere' does not exist; valid: a directory"):
    index_lib.run(settings(data, "x", images=str(tmp_path / "nowhere")), progress=False)
  with pytest.raises(ValueError, match=r"'shapes:0': the shapes source is shapes:N with N >= 1"):
    index_lib.run(settings(data, "x", images="shapes:0"), progress=False)
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match=r"holds no image files; valid suffixes: \.png"):
    index_lib.run(settings(data, "x", images=str(tmp_path / "empty")), progress=False)
  other = write_random_workdir(str(tmp_path / "other"), tiny_config(evals={}), seed=1)
  with pytest.raises(ValueError, match=rf"holds another index \(workdir: '{data['clip']}' there, '{other}' now\)"):
    index_lib.run(settings(data, "folder_index", workdir=other), progress=False)
  with pytest.raises(ValueError, match=r"another index \(source: '.*folder' there, 'shapes:4' now; items: 21 there, "
                                       r"4 now\)"):
    index_lib.run(settings(data, "folder_index", images="shapes:4"), progress=False)
  with pytest.raises(ValueError, match=r"another index \(shard_size: 8 there, 3 now\)"):
    index_lib.run(settings(data, "folder_index", shard_size=3), progress=False)
  with pytest.raises(ValueError, match=r"--index '.*folder' holds other files \(a, b, notes.txt\)"):
    index_lib.run(settings(data, "x", index=data["folder"]), progress=False)
  for name, value, valid in (("dtype", "int8", "one of"), ("shard_size", 0, ">= 1"), ("batch_size", -1, ">= 1")):
    with pytest.raises(ValueError, match=rf"--{name}={value!r} is invalid; valid: {valid}"):
      index_lib.run(settings(data, "x", **{name: value}), progress=False)
  for k in (0, -3):
    with pytest.raises(ValueError, match=rf"-k={k} is invalid; valid: >= 1"):
      query.run(out, text="a red circle", k=k)
  searcher = query.Searcher(out)
  with pytest.raises(ValueError, match="exactly one of them; got both"):
    searcher.embed(text="a red circle", image=searcher.ids[0])
  with pytest.raises(ValueError, match=r"--image '.*bad.png' is not a readable image"):
    searcher.embed(image=os.path.join(data["folder"], "a", "bad.png"))
  with pytest.raises(FileNotFoundError, match=r"--index '.*nowhere' holds no index"):
    query.run(str(tmp_path / "nowhere"), text="a red circle")
  assert not os.path.exists(str(data["root"] / "x"))  # nothing written by a refused job


CAPTIONER = dict(name="composable", image=dict(variant="mu/8", depth=1, pool="gap", posemb="sincos2d"),
                 decoder=dict(variant="mu", depth=1, mode="parallel"))


@pytest.mark.parametrize("model, name", [(CAPTIONER, "Composable"), (dict(name="lm", text=dict(variant="mu")), "LanguageModel")])
def test_model_without_embeddings_is_refused(model, name, data, tmp_path):
  cfg = tiny_config(evals={})
  cfg.model = model
  cfg.objectives = {"captioning": 1.0}
  if model["name"] == "lm":
    cfg.data.format = "lm"
  workdir = write_random_workdir(str(tmp_path / "run"), cfg, checkpoint=False)  # refused before any weights
  with pytest.raises(ValueError, match=rf"--workdir '{workdir}': its model \({name}.*\) has no image and text "
                                       r"embeddings to search with \(it has: .*\); valid: a run with contrastive"):
    index_lib.run(settings(data, "refused", workdir=workdir), progress=False)
  assert not os.path.exists(str(data["root"] / "refused"))


def test_contact_sheet_is_the_expected_grid(folder_index, tmp_path):
  out, _ = folder_index
  hits, path = query.run(out, text="a blue star", k=7, sheet=str(tmp_path / "hits.png"))
  with Image.open(path) as im:
    assert im.format == "PNG" and im.size == (5 * 132 + 4, 2 * 148 + 4)  # 5 + 2 cells of 128 px, captions
    pixels = np.asarray(im.convert("RGB"))
  assert sheet.grid_size(7) == im.size and sheet.grid_size(3) == (3 * 132 + 4, 152)
  first = pixels[4:132, 4:132]
  assert first.std() > 0  # a thumbnail, not an empty cell
  assert (pixels[152 + 4:, 2 * 132 + 4:] == 255).all()  # the row's cells after the 7th stay blank
  assert query.default_sheet(out + "/") == out + ".sheet.png"


def test_cli(folder_index, data, capsys):
  out, _ = folder_index
  assert cli.main(["index", "--workdir", data["clip"], "--images", data["folder"], "--index", out,
                   "--shard_size", str(SHARD), "--no_progress"]) == 0
  assert "indexed 20 of 21 images" in capsys.readouterr().out
  assert cli.main(["query", "--index", out, "a red circle", "-k", "4"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].split() == ["rank", "score", "path"] and len(lines) == 6
  assert lines[1].split()[0] == "1" and lines[1].split()[2].startswith(data["folder"])
  assert lines[-1] == f"contact sheet: {out}.sheet.png" and os.path.isfile(f"{out}.sheet.png")
  assert cli.main(["query", "--index", out, "a red circle", "-k", "0"]) == 2
  assert "error: -k=0 is invalid; valid: >= 1" in capsys.readouterr().err
  assert cli.main(["index", "--workdir", data["clip"], "--images", "/no/such/dir", "--index", out]) == 2
  assert "error: --images '/no/such/dir' does not exist" in capsys.readouterr().err


def test_bench_times_queries_and_finds_the_interactive_limit(folder_index):
  from vljax.search import bench
  result = bench.measure(folder_index[0], repeats=2, k=3, scan_sizes=[50, 400])
  assert result["count"] == FOLDER_IMAGES and set(result["scan"]) == {50, 400}
  assert all(v > 0 for v in (result["embed_ms"], result["search_ms"], result["query_ms"], *result["scan"].values()))
  lines = bench.table(result, budget_ms=200).splitlines()
  assert lines[2].startswith("| 20 |") and lines[4].startswith("| 400 (random rows) |")
  assert "a query passes 200 ms at about" in lines[-1]


def test_a_shard_of_unreadable_files_alone(folder_index, data, tmp_path):
  """Shards of one file: the corrupt one's shard is empty; the others' rows are the folder index's
  (each embedded in a batch of its own here: equal up to the last bits)."""
  s = settings(data, "single_index", shard_size=1)
  manifest = index_lib.run(s, progress=False)
  assert manifest["count"] == FOLDER_IMAGES and manifest["skipped"] == {"corrupt_image": 1}
  _, embeddings, ids = store.open_index(s.index)
  _, want, want_ids = store.open_index(folder_index[0])
  assert ids == want_ids
  np.testing.assert_allclose(embeddings, want, atol=1e-5)
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "x.png").write_bytes(b"garbage")
  with pytest.raises(ValueError, match=r"none of its 1 images could be read"):
    index_lib.run(settings(data, "bad_index", images=str(bad)), progress=False)


def test_query_form_index(data):
  """BLIP-2's Q-Former: one embedding per query token and image, a text scored by the best of them;
  an image query is refused (no image-image score)."""
  cfg = tiny_config(evals={})
  cfg.model = dict(name="qformer", image=dict(variant="mu/8", depth=1, posemb="sincos2d"),
                   text=dict(variant="mu", depth=1), num_queries=4, embed_dim=16)
  workdir = write_random_workdir(str(data["root"] / "qformer"), cfg)
  s = settings(data, "qformer_index", workdir=workdir, images="shapes:10")
  manifest = index_lib.run(s, progress=False)
  assert manifest["queries_per_image"] == 4 and manifest["width"] == 16
  searcher = query.Searcher(s.index)
  assert searcher.embeddings.shape == (10, 4, 16)
  q = searcher.embed(text="a red circle")
  hits = searcher.search(q, k=10)
  want = np.max(searcher.embeddings @ q, axis=1)
  np.testing.assert_allclose([h.score for h in hits], np.sort(want)[::-1], atol=1e-6)
  assert hits[0].id == f"shapes:{int(np.argmax(want))}"
  with pytest.raises(ValueError, match=r"--image: the index's model gives 4 embeddings per image \(query form"):
    searcher.embed(image=os.path.join(data["folder"], "a", "000.png"))
