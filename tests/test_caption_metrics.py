"""COCO caption metrics equal pycocoevalcap 1.2's numbers (pinned in tests/data/caption_reference.json,
made by tests/data/make_caption_reference.py with the official Java tokenizer and scorers)."""

import json
import pathlib
import random

import pytest

from vljax.evals import caption_metrics  # the public name; the code is vljax/evals/coco_metrics.py
from vljax.evals import coco_metrics as cm
from vljax.evals.coco_metrics import ptb_tokenize

REFERENCE = json.loads((pathlib.Path(__file__).parent / "data/caption_reference.json").read_text())
METRICS = ["bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider"]


def _inputs(name: str) -> tuple[dict, dict]:
  items = REFERENCE[name]["items"]
  return {it["id"]: it["candidate"] for it in items}, {it["id"]: it["references"] for it in items}


@pytest.mark.parametrize("name", ["coco_sample", "shapes"])
def test_metrics_equal_pycocoevalcap(name):
  got = caption_metrics(*_inputs(name))
  assert sorted(got) == sorted(METRICS)
  for metric in METRICS:
    assert got[metric] == pytest.approx(REFERENCE[name]["metrics"][metric], abs=1e-6), metric


@pytest.mark.parametrize("name", ["coco_sample", "shapes"])
def test_per_image_scores_equal_pycocoevalcap(name):
  """The scorers alone, on the official tokens: per-image CIDEr-D and ROUGE-L."""
  items = REFERENCE[name]["items"]
  cands, refs = [it["candidate_tokens"] for it in items], [it["reference_tokens"] for it in items]
  assert cm._cider_d(cands, refs) == pytest.approx([it["cider"] for it in items], abs=1e-9)
  assert [cm._rouge_l(c, r) for c, r in zip(cands, refs)] == pytest.approx([it["rouge_l"] for it in items], abs=1e-12)


def test_ptb_tokenize_equals_official_tokenizer():
  cases = [(t["text"], t["official"]) for t in REFERENCE["tokenization"]]
  for name in ("coco_sample", "shapes"):
    for it in REFERENCE[name]["items"]:
      cases += [(it["candidate"], it["candidate_tokens"]), *zip(it["references"], it["reference_tokens"])]
  wrong = [(text, official, ptb_tokenize(text)) for text, official in cases if ptb_tokenize(text) != official]
  assert not wrong


def test_known_gap_java_sees_the_next_caption():
  """Java tokenizes all captions as one file, so "letter B." before "A man ..." loses its period there;
  ptb_tokenize treats each caption alone, as official output does before a neutral caption."""
  for case in REFERENCE["context_gap"]:
    assert ptb_tokenize(case["text"]) == case["official_before_neutral"]
    assert case["official_before_next"] != case["official_before_neutral"]


def test_identical_candidate_and_reference_scores_one():
  caption = "A man riding a red bike down the street."
  got = caption_metrics({1: caption, 2: "two dogs play in the snow"}, {1: [caption], 2: ["two dogs play in the snow"]})
  for metric in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l"):
    assert got[metric] == pytest.approx(1.0, abs=1e-6), metric


def test_dict_order_does_not_change_metrics():
  cands, refs = _inputs("coco_sample")
  keys = list(cands)
  random.Random(0).shuffle(keys)
  shuffled = caption_metrics({k: cands[k] for k in keys}, {k: refs[k] for k in reversed(keys)})
  assert shuffled == caption_metrics(cands, refs)


@pytest.mark.parametrize("cands, refs, message", [
    ({1: "a dog", 2: "a cat"}, {1: ["a dog"]}, "candidate ids without references: \\[2\\]"),
    ({1: "a dog"}, {1: ["a dog"], 3: ["a cat"]}, "reference ids without a candidate: \\[3\\]"),
    ({1: "a dog"}, {1: []}, "references\\[1\\] must be a non-empty list"),
    ({1: "a dog"}, {1: "a dog"}, "references\\[1\\] must be a non-empty list"),
    ({1: "a dog"}, {1: ["a dog", None]}, "references\\[1\\] must be a non-empty list of str"),
    ({1: None}, {1: ["a dog"]}, "candidate 1 is NoneType"),
    ({1: ["a dog"]}, {1: ["a dog"]}, "candidate 1 is list"),
    ({}, {}, "no candidates"),
])
def test_bad_input_is_a_clear_error(cands, refs, message):
  with pytest.raises(ValueError, match=message):
    caption_metrics(cands, refs)
