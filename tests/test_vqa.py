"""VQA: answer normalisation and accuracy (official VQA v2 rules), the majority baseline, and the
k-shot evaluator end to end against fake runners (no model, no JAX computation)."""

from __future__ import annotations

import numpy as np
import pytest

from vljax.data import prompts, shapes
from vljax.data.pipeline import preprocess_images
from vljax.data.tokenizers import get_tokenizer
from vljax.evals.vqa import VQAEvaluator
from vljax.evals.vqa_metrics import (accuracy_by_type, majority_answers, majority_baseline, normalize_answer,
                                     vqa_accuracy)

# ---------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("text, expected", [
    ("Yes.", "yes"),
    ("yes!", "yes"),
    ("(yes)", "yes"),
    ("The Two Dogs.", "2 dogs"),        # articles go, number words become digits
    ("an apple", "apple"),
    ("a", ""),
    ("none", "0"),
    ("ten", "10"),
    ("2.5", "2.5"),                     # a period before a digit stays ...
    ("2.", "2"),                        # ... any other goes
    ("1,000", "1000"),                  # a thousands comma: all punctuation deleted
    ("red, blue", "red blue"),          # punctuation next to a space: deleted
    ("red,blue", "red blue"),           # otherwise: a space
    ("t-shirt", "t shirt"),
    ("dont", "don't"),                  # contractions get their apostrophes back
    ("Couldn'tve", "couldn't've"),
    ("its", "its"),                     # a word in its own right: left alone
    ("  green\tstar \n", "green star"),
])
def test_normalize_answer(text, expected):
  assert normalize_answer(text) == expected


def test_normalize_answer_rejects_non_strings():
  with pytest.raises(ValueError, match="string.*NoneType"):
    normalize_answer(None)


# ---------------------------------------------------------------------------- accuracy


def test_number_words_match_digits():
  assert vqa_accuracy("2", ["two"]) == 1.0
  assert vqa_accuracy("Two.", ["2"]) == 1.0
  assert vqa_accuracy("three", ["two"]) == 0.0


# The official script's leave-one-out average (tests/test_vqa_official.py checks it against a direct copy).
@pytest.mark.parametrize("matching, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_soft_accuracy_with_ten_references(matching, expected):
  refs = ["Red."] * matching + ["blue"] * (10 - matching)
  assert vqa_accuracy("red", refs) == pytest.approx(expected)


def test_one_reference_match_scores_one():
  assert vqa_accuracy("the red", ["red"]) == 1.0
  assert vqa_accuracy("red", "red") == 1.0  # a single answer may be passed as a string
  assert vqa_accuracy("blue", ["red"]) == 0.0


@pytest.mark.parametrize("prediction, references, message", [
    ("red", [], "no reference"),
    ("red", [3], "must be strings"),
    (None, ["red"], "prediction must be a string"),
    (2, ["two"], "prediction must be a string"),
])
def test_accuracy_bad_input(prediction, references, message):
  with pytest.raises(ValueError, match=message):
    vqa_accuracy(prediction, references)


def test_accuracy_by_type():
  preds = ["red", "2", "no", "blue star", "blue"]
  refs = ["red", "two", "yes", ["blue star"] * 10, "green"]
  types = ["color", "count", "exists", "left_of", "color"]
  assert accuracy_by_type(preds, refs, types) == pytest.approx(
      {"acc": 3 / 5, "acc_color": 0.5, "acc_count": 1.0, "acc_exists": 0.0, "acc_left_of": 1.0})
  with pytest.raises(ValueError, match="one entry per question"):
    accuracy_by_type(preds, refs, types[:-1])
  with pytest.raises(ValueError, match="no questions"):
    accuracy_by_type([], [], [])


def test_majority_baseline():
  train = [("red", "color"), ("Red", "color"), ("blue", "color"), ("two", "count"), ("2", "count"),
           ("one", "count"), ("yes", "exists"), ("no", "exists")]
  answers, types = zip(*train)
  # "two" and "2" are one answer; the yes/no tie goes to the alphabetically first.
  assert majority_answers(answers, types) == {"color": "red", "count": "2", "exists": "no"}
  evals = [("red", "color"), ("blue", "color"), ("two", "count"), ("2", "count"), ("yes", "exists"),
           ("no", "exists"), ("no", "exists")]
  refs, eval_types = zip(*evals)
  assert majority_baseline(answers, types, refs, eval_types) == pytest.approx(
      {"acc": 5 / 7, "acc_color": 0.5, "acc_count": 1.0, "acc_exists": 2 / 3})
  # A type never seen in training gets the overall most frequent answer ("2" and "red" tie: "2").
  assert majority_baseline(answers, types, ["2", "red"], ["left_of", "left_of"]) == pytest.approx(
      {"acc": 0.5, "acc_left_of": 0.5})
  with pytest.raises(ValueError, match="no questions"):
    majority_baseline([], [], ["red"], ["color"])


# ---------------------------------------------------------------------------- the evaluator

N, NUM_SUPPORT, SIZE = 16, 12, 32


@pytest.fixture(scope="module")
def world():
  return shapes.ShapesWorld(seed=0, image_size=SIZE)


@pytest.fixture(scope="module")
def tokenizer():
  return get_tokenizer("shapes")


@pytest.fixture(scope="module")
def data(world):
  """What the evaluator should use, rebuilt from the world: by image bytes, (question, answer)."""
  def by_image(split, n):
    out = {}
    for i in range(n):
      e = world.vqa_example(i, split)
      out[preprocess_images(e["image"]).tobytes()] = (e["question"], e["answer"], e["question_type"])
    return out
  return dict(eval=by_image("eval", N), train=by_image("train", NUM_SUPPORT),
              eval_list=[world.vqa_example(i, "eval") for i in range(N)])


class FakeRunner:
  """runner.generate with canned answers: `answer(query_image_bytes)`; records every call."""

  def __init__(self, answer):
    self.answer, self.calls = answer, []

  def generate(self, params, images, prompt_ids, prompt_lengths, options):
    self.calls.append(dict(images=images, ids=prompt_ids, lengths=prompt_lengths, options=options))
    return [self.answer(row[-1].tobytes()) for row in images]


def make(world, tokenizer, max_len=24, **settings):
  settings = dict(dict(num_examples=N, num_support=NUM_SUPPORT, prompt_max_len=80), **settings)
  return VQAEvaluator(settings, tokenizer=tokenizer, max_len=max_len, data=dict(world_seed=world.seed, image_size=world.image_size))


TYPE_KEYS = {f"acc_{t}" for t in shapes.QUESTION_TYPES}


def test_oracle_scores_one_through_normalisation(world, tokenizer, data):
  # "The TWO." must count as "two": the evaluator scores through the VQA normalisation.
  runner = FakeRunner(lambda img: f"The {data['eval'][img][1].upper()}.")
  out = make(world, tokenizer, shots=(0, 2, 4))(runner, params=None)
  majority = {f"majority_{k}" for k in {"acc"} | TYPE_KEYS}
  assert set(out) == {"acc", "acc_0shot", "acc_2shot", "acc_4shot"} | TYPE_KEYS | majority
  assert all(out[k] == 1.0 for k in {"acc", "acc_0shot", "acc_2shot", "acc_4shot"} | TYPE_KEYS)
  assert all(0.0 <= out[k] <= 1.0 for k in majority)


def test_constant_answer(world, tokenizer, data):
  runner = FakeRunner(lambda img: "red")
  out = make(world, tokenizer)(runner, params=None)
  answers = np.array([e["answer"] for e in data["eval_list"]])
  types = np.array([e["question_type"] for e in data["eval_list"]])
  assert out["acc"] == out["acc_0shot"] == pytest.approx(np.mean(answers == "red"))
  assert out["acc_color"] == pytest.approx(np.mean(answers[types == "color"] == "red"))
  assert out["acc_count"] == out["acc_exists"] == out["acc_left_of"] == 0.0
  assert len(runner.calls) == 1  # shots default to (0,)
  assert runner.calls[0]["options"].method == "greedy" and runner.calls[0]["options"].max_len == 4


def test_k_shot_prompts_and_images(world, tokenizer, data):
  runner = FakeRunner(lambda img: "yes")
  evaluator = make(world, tokenizer, shots=(0, 3))
  evaluator(runner, params=None)
  for k, call in zip((0, 3), runner.calls):
    assert call["images"].shape == (N, k + 1, SIZE, SIZE, 3) and call["images"].dtype == np.float32
    # Padded to the longest prompt of the k, not to prompt_max_len=80.
    assert call["ids"].shape == (N, max(call["lengths"])) and call["lengths"].shape == (N,)
    for row in range(N):
      ids = call["ids"][row, :call["lengths"][row]].tolist()
      assert ids.count(tokenizer.image_id) == k + 1
      assert (call["ids"][row, call["lengths"][row]:] == tokenizer.pad_id).all()
      # Chunks in the order of their images: k answered training questions, then the eval one.
      imgs = [im.tobytes() for im in call["images"][row]]
      chunks = [prompts.vqa_chunk(*data["train"][im][:2]) for im in imgs[:-1]]
      chunks.append(prompts.vqa_chunk(data["eval"][imgs[-1]][0]))
      assert len(set(imgs[:-1])) == k  # distinct support examples
      assert ids == [tokenizer.bos_id] + [i for p, t in chunks for i in tokenizer.content_ids(p + t)]


def test_supports_are_deterministic_nested_and_seeded(world, tokenizer):
  a, b = make(world, tokenizer, shots=(2, 4)), make(world, tokenizer, shots=(2, 4))
  np.testing.assert_array_equal(a.prompts[4][0], b.prompts[4][0])
  np.testing.assert_array_equal(a.images_for(2), a.images_for(4)[:, [0, 1, 4]])  # 2-shot supports in 4-shot's
  c = make(world, tokenizer, shots=(4,), seed=1)
  assert not np.array_equal(a.support, c.support)


def test_without_zero_shot_only_k_shot_and_majority(world, tokenizer):
  out = make(world, tokenizer, shots=(1,))(FakeRunner(lambda img: "no"), params=None)
  assert set(out) == {"acc_1shot", "majority_acc"} | {f"majority_{k}" for k in TYPE_KEYS}


def test_prompt_that_does_not_fit_names_the_numbers(world, tokenizer):
  # Zero-shot questions fit the caption length; 8-shot prompts do not.
  make(world, tokenizer, prompt_max_len=24, shots=(0,))
  with pytest.raises(ValueError, match=r"8-shot prompt needs \d+ tokens, more than prompt_max_len=24"):
    VQAEvaluator(dict(num_examples=N, num_support=NUM_SUPPORT, shots=(0, 8)), tokenizer=tokenizer,
                 max_len=24, data=dict(world_seed=world.seed, image_size=world.image_size))


@pytest.mark.parametrize("settings, message", [
    (dict(shots=(-1,)), "shots"),
    (dict(shots=(0, 0)), "repeats"),
    (dict(shots="4"), "shots"),
    (dict(shots=(0, 13)), "num_support=12 is too small"),
    (dict(num_examples=0), "num_examples=0"),
    (dict(decode=dict(beams=2)), "unknown option beams"),
])
def test_bad_settings(world, tokenizer, settings, message):
  with pytest.raises(ValueError, match=message):
    make(world, tokenizer, **settings)


def test_bad_runner_output(world, tokenizer):
  evaluator = make(world, tokenizer)

  class Short:
    def generate(self, params, images, ids, lengths, options):
      return ["red"] * (len(ids) - 1)

  with pytest.raises(ValueError, match=f"returned {N - 1} answers for {N} prompts"):
    evaluator(Short(), params=None)
  with pytest.raises(ValueError, match="must return strings"):
    evaluator(FakeRunner(lambda img: None), params=None)
