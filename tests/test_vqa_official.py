"""VQA accuracy (vljax/evals/vqa_metrics.py) against a direct implementation of the official VQA v2
evaluation's rule: for each annotator's answer, min(#matches among the *other* answers / 3, 1),
averaged over annotators."""

import numpy as np
import pytest

from vljax.evals.vqa_metrics import accuracy_by_type, normalize_answer, vqa_accuracy


def _official(prediction, references):
  """As vqaEval.py: answers are records with distinct ids, so `item != gtAnsDatum` drops exactly one."""
  answers = [dict(answer_id=i, answer=normalize_answer(r)) for i, r in enumerate(references)]
  pred = normalize_answer(prediction)
  accs = []
  for gt in answers:
    others = [a for a in answers if a != gt]
    matching = [a for a in others if a["answer"] == pred]
    accs.append(min(1.0, len(matching) / 3))
  return sum(accs) / len(accs)


def test_three_of_ten_matching_scores_point_nine():
  refs = ["two"] * 3 + ["three"] * 7
  assert _official("2", refs) == pytest.approx(0.9)
  assert vqa_accuracy("2", refs) == pytest.approx(0.9)  # not min(3 / 3, 1) = 1.0


def test_matches_the_official_rule_on_random_reference_lists():
  """2..10 references drawn from a small vocabulary (so many repeat), predictions in and out of it,
  spellings that normalise together ("Two." / "2")."""
  rng = np.random.default_rng(0)
  vocab = ["red", "Red.", "blue", "2", "two", "a cat", "cat", "yes"]
  for _ in range(500):
    refs = list(rng.choice(vocab, int(rng.integers(2, 11))))
    pred = str(rng.choice(vocab + ["green"]))
    assert vqa_accuracy(pred, refs) == pytest.approx(_official(pred, refs), abs=1e-12), (pred, refs)


def test_fewer_references_follow_the_rule_and_one_is_exact_match():
  # Leave-one-out over the given answers: 2 of 2 matching leaves 1 match in each subset.
  assert vqa_accuracy("red", ["red", "red"]) == pytest.approx(1 / 3) == pytest.approx(_official("red", ["red"] * 2))
  assert vqa_accuracy("red", ["red"] * 4) == 1.0
  # One reference: the rule would leave none (0 for every prediction); it is scored as exact match.
  assert _official("red", ["red"]) == 0.0
  assert vqa_accuracy("red", ["red"]) == 1.0 and vqa_accuracy("blue", ["red"]) == 0.0
  # accuracy_by_type averages the per-question scores.
  assert accuracy_by_type(["2", "red"], [["two"] * 3 + ["one"] * 7, "red"], ["count", "color"]) == pytest.approx(
      {"acc": 0.95, "acc_count": 0.9, "acc_color": 1.0})
