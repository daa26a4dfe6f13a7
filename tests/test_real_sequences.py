"""Chunked formats ("vlm", "lm") from real sources: question-answer and caption records grouped into
sequences, interleaved documents, bad records skipped and counted, start-up errors, exact resume,
and a short LLaVA run on JSONL question-answer records."""

import json
import os

import numpy as np
import pytest
from absl import flags

from conftest import tiny_config, workdir_listing
from real_data import encode, write_tar_shards
from vljax.data import formats, pipeline, shapes
from vljax.data.sources import records, skips
from vljax.data.tokenizers import ShapesTokenizer

if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags
  flags.FLAGS.mark_as_parsed()

TOK = ShapesTokenizer()
SIZE = 24
BASE = dict(image_size=SIZE, max_len=48, num_threads=1, prefetch=2)


def _samples(n, seed=0):
  """n shapes-world examples, question-answer and caption records alternating: {"image", ...text fields}."""
  world = shapes.ShapesWorld(seed=seed, image_size=SIZE)
  out = []
  for i in range(n):
    ex = world.vqa_example(i, "train") if i % 2 == 0 else world.example(i, "train")
    out.append({k: ex[k] for k in ("image", "question", "answer", "caption") if k in ex})
  return out


def _write_jsonl(directory, lines):
  """JSONL lines (dicts, or raw strings written as they are); images (uint8 arrays or bytes) to files."""
  os.makedirs(os.path.join(directory, "images"), exist_ok=True)
  count = [0]

  def image_path(image):
    rel = f"images/{count[0]:05d}.png"
    count[0] += 1
    with open(os.path.join(directory, rel), "wb") as f:
      f.write(image if isinstance(image, bytes) else encode(image, "PNG"))
    return rel

  def with_paths(record):
    if "chunks" in record and isinstance(record["chunks"], list):
      return dict(record, chunks=[with_paths(c) if isinstance(c, dict) else c for c in record["chunks"]])
    if isinstance(record.get("image"), (np.ndarray, bytes)):
      return dict(record, image=image_path(record["image"]))
    return record

  path = os.path.join(directory, "data.jsonl")
  with open(path, "w") as f:
    for line in lines:
      f.write((line if isinstance(line, str) else json.dumps(with_paths(line))) + "\n")
  return path


def _png(record):
  """Images (uint8 arrays) of a record or of its chunks PNG-encoded; anything else kept as it is."""
  if not isinstance(record, dict):
    return record
  if isinstance(record.get("chunks"), list):
    return dict(record, chunks=[_png(c) for c in record["chunks"]])
  return dict(record, image=encode(record["image"], "PNG")) if isinstance(record.get("image"), np.ndarray) else record


def _write_array_records(directory, lines):
  with records.RecordWriter(str(directory), records_per_file=5) as writer:
    for i, line in enumerate(lines):
      writer.write_packed(records.pack(dict(_png(line), key=f"{i:05d}")))
  return str(directory)


def _write(kind, directory, lines):
  return _write_jsonl(directory, lines) if kind == "folder" else _write_array_records(directory, lines)


def _eval_batches(cfg, batch):
  return list(pipeline.make_eval_dataset(dict(BASE, **cfg), TOK, global_batch_size=batch))


def _expected(data_format, sequences):
  """What the format's own collate makes of the samples (PNG at the read size: pixels exact)."""
  settings = formats.CollateSettings(TOK, BASE["max_len"])
  return formats.get_format(data_format).collate(settings)(sequences)


def _assert_batches(got, want):
  for key in want:
    np.testing.assert_array_equal(np.concatenate([b[key] for b in got]), want[key], err_msg=key)


@pytest.mark.parametrize("source", ["folder", "array_record"])
@pytest.mark.parametrize("data_format", ["vlm", "lm"])
def test_question_answer_and_caption_records_become_sequences(tmp_path, source, data_format):
  samples = _samples(8)
  path = _write(source, tmp_path / "data", samples)
  got = _eval_batches(dict(name=source, path=path, format=data_format, chunks=2), batch=2)
  assert len(got) == 2  # 8 records = 4 sequences of 2 chunks
  _assert_batches(got, _expected(data_format, [samples[i:i + 2] for i in range(0, 8, 2)]))
  assert ("image" in got[0]) == (data_format == "vlm")
  text = TOK.decode(got[0]["text"])[0]
  assert text.count("question") == 1 and text.count("caption") == 1
  assert all(b[pipeline.SKIPPED_KEY].sum() == 0 for b in got)


def _documents():
  """Four documents of 3, 1, 2 and 2 chunks (captions and questions mixed)."""
  s = _samples(8, seed=1)
  return [{"chunks": s[0:3]}, {"chunks": s[3:4]}, {"chunks": s[4:6]}, {"chunks": s[6:8]}]


@pytest.mark.parametrize("source", ["folder", "array_record"])
def test_interleaved_documents_are_cut_into_sequences(tmp_path, source):
  docs = _documents()
  path = _write(source, tmp_path / "docs", docs)
  cfg = dict(name=source, path=path, chunks_key="chunks", chunks=2)
  got = _eval_batches(dict(cfg, format="vlm"), batch=3)
  # The 3-chunk document gives one sequence (its third chunk is dropped), the 1-chunk one none.
  _assert_batches(got, _expected("vlm", [docs[0]["chunks"][:2], docs[2]["chunks"], docs[3]["chunks"]]))
  assert skips.counts_dict(got[-1][pipeline.SKIPPED_KEY]) == {"short_document": 1}
  lm = _eval_batches(dict(cfg, format="lm", chunks=1), batch=8)
  assert set(lm[0]) == {"text", "loss_mask", pipeline.SKIPPED_KEY}
  _assert_batches(lm, _expected("lm", [[c] for d in docs for c in d["chunks"]]))


def test_corrupt_records_are_skipped_and_counted(tmp_path):
  good = _samples(6)
  image = good[0]["image"]
  lines = [good[0], {"image": image, "question": "what color is it?"},  # no answer
           good[1], {"image": b"\x89PNG not an image", "caption": "a red circle"},
           good[2], {"image": image, "question": "how many?", "answer": 3},  # answer of the wrong type
           "{not json", good[3], {"image": "images/nowhere.png", "caption": "a blue star"},
           {"image": image, "question": ["what?"], "answer": "red"}, good[4], good[5]]
  path = _write_jsonl(tmp_path / "bad", lines)
  got = _eval_batches(dict(name="folder", path=path, format="vlm", chunks=2), batch=3)
  _assert_batches(got, _expected("vlm", [good[0:2], good[2:4], good[4:6]]))
  assert skips.counts_dict(np.sum([b[pipeline.SKIPPED_KEY] for b in got], axis=0)) == {
      "empty_answer": 3, "corrupt_image": 1, "bad_record": 1, "missing_image": 1}
  # Documents: a chunk that is not a map, a document whose chunks are not a list.
  docs = _documents()
  path = _write_array_records(tmp_path / "bad_docs", [docs[0], {"chunks": "a red circle"},
                                                       {"chunks": [docs[2]["chunks"][0], 7]}, docs[3]])
  got = _eval_batches(dict(name="array_record", path=path, format="lm", chunks=2, chunks_key="chunks"), batch=2)
  _assert_batches(got, _expected("lm", [docs[0]["chunks"][:2], docs[3]["chunks"]]))
  assert skips.counts_dict(got[-1][pipeline.SKIPPED_KEY]) == {"bad_record": 2}


def test_convert_writes_question_answer_records_and_documents(tmp_path):
  from vljax.data import convert

  samples = _samples(6)
  qa = _write_jsonl(tmp_path / "qa", samples[:3] + [{"image": samples[0]["image"], "question": "what?"}] + samples[3:])
  written, skipped, _ = convert.convert(qa, str(tmp_path / "qa_out"), progress=False)
  assert (written, skipped) == (6, {"empty_answer": 1})
  cfg = dict(format="vlm", chunks=2)
  _assert_batches(_eval_batches(dict(cfg, name="array_record", path=str(tmp_path / "qa_out")), batch=3),
                  _expected("vlm", [samples[i:i + 2] for i in range(0, 6, 2)]))
  docs = _documents()
  lines = [docs[0], {"chunks": [docs[2]["chunks"][0], {"image": b"broken", "caption": "a red circle"}]}, docs[3]]
  written, skipped, _ = convert.convert(_write_jsonl(tmp_path / "docs", lines), str(tmp_path / "docs_out"),
                                        progress=False, chunks_key="chunks")
  assert (written, skipped) == (2, {"corrupt_image": 1})
  got = _eval_batches(dict(cfg, name="array_record", path=str(tmp_path / "docs_out"), chunks_key="chunks"), batch=2)
  _assert_batches(got, _expected("vlm", [docs[0]["chunks"][:2], docs[3]["chunks"]]))


@pytest.fixture(scope="module")
def qa_jsonl(tmp_path_factory):
  return _write_jsonl(tmp_path_factory.mktemp("qa"), [
      {k: v for k, v in s.items() if k != "caption"} for s in _samples(8) if "question" in s])


@pytest.mark.parametrize("change, message", [
    (dict(format="vlm", caption_key="", question_key="", answer_key="", conversation_key=""),
     r"data.format='vlm' needs caption, question-answer or conversation chunks.*data.caption_key=''"),
    (dict(format="caption", chunks=2), r"data.chunks=2.*chunked data.format.*\['lm', 'vlm'\].*data.format='caption'"),
    (dict(format="vlm", chunks=0), r"data.chunks=0 must be an int >= 1"),
    (dict(format="caption", chunks_key="chunks"), r"data.chunks_key='chunks'.*\['lm', 'vlm'\].*'caption'"),
    (dict(format="vlm", answer_key=""), r"data.question_key='question' and data.answer_key=''"),
    (dict(format="vlm", question_key="q", answer_key="a"),
     r"none of data.caption_key='caption', data.question_key='q'.*columns: \['answer', 'image', 'question'\]"),
    (dict(format="caption"), r"data.caption_key='caption' is not in its records"),
    (dict(format="vlm", chunks_key="chunks"), r"data.chunks_key='chunks' is not in its records"),
    (dict(format="vlm", name="webdataset", chunks_key="chunks"), r"'webdataset' source has no documents"),
    (dict(format="vlm", name="webdataset", caption_key="", question_key="", answer_key=""),
     r"'webdataset' source is set to read none.*data.question_key/answer_key$"),
    (dict(format="vlm", name="tfds", caption_key=""), r"'tfds' source is set to read none.*come from \['folder', "
                                                      r"'array_record', 'webdataset'\]"),
])
def test_formats_a_source_cannot_feed_fail_at_start(qa_jsonl, change, message):
  cfg = dict(dict(BASE, name="folder", path=qa_jsonl), **change)
  with pytest.raises(ValueError, match=message):
    pipeline.check_data_config(cfg)


def test_shapes_chunks_on_a_caption_format_fail_at_start():
  with pytest.raises(ValueError, match=r"data.chunks=3.*\['lm', 'vlm'\]"):
    pipeline.check_data_config(dict(name="shapes", format="caption", chunks=3))


def test_a_run_with_a_format_the_source_cannot_feed_leaves_no_workdir(qa_jsonl, tmp_path):
  from vljax.train.trainer import train_and_evaluate

  cfg = _llava_config(qa_jsonl)
  cfg.data.update(caption_key="", question_key="", answer_key="", conversation_key="")
  with pytest.raises(ValueError, match="data.format='vlm' needs caption, question-answer or conversation chunks"):
    train_and_evaluate(cfg, str(tmp_path / "w"))
  assert workdir_listing(tmp_path / "w") is None


def _resume_matches(cfg, before, after, batch=4):
  it = iter(pipeline.make_train_dataset(cfg, TOK, global_batch_size=batch, seed=5))
  for _ in range(before):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # what the checkpoint keeps
  expected = [next(it) for _ in range(after)]
  it.close()
  fresh = iter(pipeline.make_train_dataset(cfg, TOK, global_batch_size=batch, seed=5))
  fresh.set_state(state)
  got = [next(fresh) for _ in range(after)]
  fresh.close()
  for x, y in zip(got, expected):
    assert set(x) == set(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)
  return expected


def test_resume_is_exact_mid_stream_over_records_and_documents(tmp_path):
  samples = _samples(10)
  path = _write_array_records(tmp_path / "qa", samples[:5] + [{"image": b"broken", "caption": "x"}] + samples[5:])
  cfg = dict(BASE, name="array_record", path=path, format="vlm", chunks=2)
  # 3 batches of 4 sequences of 2: past the first epoch (11 records), through the bad record.
  got = _resume_matches(cfg, before=3, after=3)
  assert all(b["image"].shape == (4, 2, SIZE, SIZE, 3) for b in got)
  docs = _write_jsonl(tmp_path / "docs", _documents() * 2)
  _resume_matches(dict(BASE, name="folder", path=docs, format="vlm", chunks=1, chunks_key="chunks"),
                  before=2, after=3)
  mixture = dict(BASE, name="mixture", format="lm", chunks=2, sources=(
      dict(name="array_record", path=path, weight=1.0),
      dict(name="folder", path=docs, chunks_key="chunks", weight=1.0)))
  _resume_matches(mixture, before=3, after=2)


def _llava_config(path):
  cfg = tiny_config(evals={}, total_steps=4, batch_size=8)
  cfg.model = dict(name="llava", image=dict(variant="mu/8", posemb="sincos2d"), text=dict(variant="mu", max_len=48))
  cfg.objectives = {"captioning": 1.0}
  cfg.data.update(name="folder", path=path, format="vlm", chunks=1, image_size=SIZE, max_len=24)
  cfg.checkpoint = dict(every=2, keep=1, async_save=False)
  return cfg


@pytest.mark.slow
def test_llava_trains_on_jsonl_question_answer_records(qa_jsonl, tmp_path):
  from vljax.metrics import read_metrics
  from vljax.train.trainer import train_and_evaluate

  workdir = str(tmp_path / "llava")
  train_and_evaluate(_llava_config(qa_jsonl), workdir)
  metrics = read_metrics(workdir)
  losses = metrics["train/loss"]
  assert sorted(losses) == [1, 2, 3, 4] and all(np.isfinite(v) for v in losses.values())
  assert metrics["data/skipped"][4] == 0


def _text_records(image):
  """Records no sequence can hold, with their skip reasons, and two that fit alone but not together
  (max_len 48: a chunk of 30 words takes 33 tokens with its prompt and <eoc>)."""
  bad = [({"image": image, "caption": "red " * 60}, "too_long"),
         ({"image": image, "caption": "a red <image> circle"}, "special_token_in_text"),
         ({"image": image, "question": "what color is it?", "answer": "red<eoc> blue"}, "special_token_in_text"),
         ({"image": image, "question": "<image> what color is it?", "answer": "red"}, "special_token_in_text")]
  return bad, [{"image": image, "caption": "red " * 30}, {"image": image, "caption": "blue " * 30}]


@pytest.mark.parametrize("source", ["folder", "array_record"])
@pytest.mark.parametrize("data_format", ["vlm", "lm"])
def test_records_that_cannot_make_a_row_are_skipped_and_counted(tmp_path, source, data_format):
  good = _samples(8)
  bad, pair = _text_records(good[0]["image"])
  # Surviving examples: g0 g1 | g2 g3 | g4 g5 | pair (too long together) | g6 g7.
  lines = good[:2] + [bad[0][0]] + good[2:4] + [r for r, _ in bad[1:]] + good[4:6] + pair + good[6:]
  path = _write(source, tmp_path / "data", lines)
  got = _eval_batches(dict(name=source, path=path, format=data_format, chunks=2), batch=2)
  _assert_batches(got, _expected(data_format, [good[i:i + 2] for i in range(0, 8, 2)]))
  assert skips.counts_dict(np.sum([b[pipeline.SKIPPED_KEY] for b in got], axis=0)) == {
      "too_long": 2, "special_token_in_text": 3}
  # One chunk a sequence: the pair fits, the rest is skipped alike.
  got = _eval_batches(dict(name=source, path=path, format=data_format, chunks=1), batch=5)
  _assert_batches(got, _expected(data_format, [[r] for r in good[:6] + pair + good[6:]]))
  assert skips.counts_dict(np.sum([b[pipeline.SKIPPED_KEY] for b in got], axis=0)) == {
      "too_long": 1, "special_token_in_text": 3}


@pytest.mark.parametrize("data_format", ["vlm", "lm"])
def test_document_windows_that_cannot_make_a_row_are_skipped_and_counted(tmp_path, data_format):
  good = _samples(8, seed=2)
  (long, _), (image_token, _), *_ = _text_records(good[0]["image"])[0]
  pair = _text_records(good[0]["image"])[1]
  docs = [{"chunks": good[0:2] + [long, good[2]]},  # its second window holds a chunk too long alone
          {"chunks": [good[3], image_token, good[4], good[5]]},  # its first window holds "<image>"
          {"chunks": pair},  # one window, too long as a whole
          {"chunks": good[6:8]}]
  path = _write_jsonl(tmp_path / "docs", docs)
  got = _eval_batches(dict(name="folder", path=path, format=data_format, chunks=2, chunks_key="chunks"), batch=3)
  _assert_batches(got, _expected(data_format, [good[0:2], good[4:6], good[6:8]]))
  assert skips.counts_dict(got[-1][pipeline.SKIPPED_KEY]) == {"too_long": 2, "special_token_in_text": 1}


def test_resume_is_exact_across_records_that_cannot_make_a_row(tmp_path):
  good = _samples(8)
  bad, pair = _text_records(good[0]["image"])
  path = _write_jsonl(tmp_path / "qa", good[:3] + [r for r, _ in bad] + good[3:6] + pair + good[6:])
  cfg = dict(BASE, name="folder", path=path, format="vlm", chunks=2)
  # 4 batches of 4 sequences before, 4 after: several epochs of 14 records, every skip on both sides.
  got = _resume_matches(cfg, before=4, after=4)
  counts = skips.counts_dict(np.sum([b[pipeline.SKIPPED_KEY] for b in got], axis=0))
  assert counts["too_long"] > 0 and counts["special_token_in_text"] > 0
  docs = [{"chunks": good[0:2] + [bad[0][0], good[2]]}, {"chunks": [good[3], bad[1][0]]}, {"chunks": good[4:8]}]
  _resume_matches(dict(BASE, name="folder", path=_write_jsonl(tmp_path / "docs", docs), format="lm", chunks=2,
                       chunks_key="chunks"), before=3, after=3, batch=2)


def test_a_source_whose_records_never_fit_fails_instead_of_spinning(tmp_path):
  image = _samples(1)[0]["image"]
  path = _write_jsonl(tmp_path / "long", [{"image": image, "caption": "red " * 60}] * 3)
  cfg = dict(BASE, name="folder", path=path, format="lm")
  with pytest.raises(ValueError, match=r"no usable example.*'too_long'.*raise data.max_len"):
    next(iter(pipeline.make_train_dataset(cfg, TOK, global_batch_size=2, seed=0)))
  # Each fits alone, no two together: the sequences are dropped until the bound.
  pair = _text_records(image)[1]
  cfg = dict(cfg, path=_write_jsonl(tmp_path / "pairs", pair * 2), chunks=2)
  with pytest.raises(ValueError, match=r"no usable example.*'too_long'"):
    next(iter(pipeline.make_train_dataset(cfg, TOK, global_batch_size=2, seed=0)))


class _NoTokenizing(ShapesTokenizer):
  def content_ids(self, text):
    raise AssertionError(f"tokenized {text!r} again")


@pytest.mark.parametrize("data_format", ["vlm", "lm"])
def test_the_collate_lays_out_carried_tokens_without_tokenizing_again(data_format):
  from vljax.data import prompts

  fmt, samples = formats.get_format(data_format), _samples(6)
  carried = [[dict(ex, **{prompts.TOKENS: fmt.chunk_tokens(TOK, ex)}) for ex in samples[i:i + 3]] for i in (0, 3)]
  got = fmt.collate(formats.CollateSettings(_NoTokenizing(), BASE["max_len"]))(carried)
  _assert_batches([got], _expected(data_format, [samples[0:3], samples[3:6]]))


def test_webdataset_json_carries_question_answer_records(tmp_path):
  samples = _samples(8)
  image = samples[0]["image"]
  # A question-answer sample: its .json holds the question and answer (no .txt); captions as ever.
  as_tar = lambda s: (dict(image=s["image"], txt=False, json={"question": s["question"], "answer": s["answer"]})
                      if "question" in s else s)  # noqa: E731
  lines = [as_tar(s) for s in samples[:4]] + [as_tar({"image": image, "question": "<image> what?", "answer": "red"})]
  write_tar_shards(tmp_path / "tar", lines + [as_tar(s) for s in samples[4:]], per_shard=3, fmt="PNG")
  cfg = dict(name="webdataset", path=str(tmp_path / "tar"), chunks=2)
  got = _eval_batches(dict(cfg, format="vlm"), batch=2)
  _assert_batches(got, _expected("vlm", [samples[i:i + 2] for i in range(0, 8, 2)]))
  assert skips.counts_dict(np.sum([b[pipeline.SKIPPED_KEY] for b in got], axis=0)) == {"special_token_in_text": 1}
  # Caption formats read the captions alone: a question-answer sample there has none.
  got = _eval_batches(dict(cfg, format="caption", chunks=1), batch=4)
  assert skips.counts_dict(np.sum([b[pipeline.SKIPPED_KEY] for b in got], axis=0)) == {"empty_caption": 5}
