"""VQA answer normalisation and accuracy, following the official VQA v2 evaluation script.

`normalize_answer` reproduces the script's `processPunctuation` + `processDigitArticle`:
punctuation is deleted or turned into spaces, a period survives only before a digit ("2.5"),
"1,000" -> "1000", number words become digits, articles go, apostrophe-less contractions get
their apostrophes back. Both the prediction and the references are normalised here (the official
annotations ship pre-normalised, so the script only cleans the prediction).
"""

from __future__ import annotations

import collections
import itertools
import re
from collections.abc import Sequence

# Punctuation of the official script: deleted where it touches a space (or anywhere, when the
# text holds a number with a thousands comma), otherwise turned into a space. The apostrophe is
# not in it (contractions keep theirs) and neither is the period (handled by _PERIOD).
_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
          ",", "?", "!")
_THOUSANDS_COMMA = re.compile(r"\d,\d")
# The script means "a period not inside a number", but its look-behind is mistyped, so what it
# really drops is every period not followed by a digit ("2." -> "2", "2.5" stays); we match that.
_PERIOD = re.compile(r"\.(?!\d)")
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset(("a", "an", "the"))
# The script's contractions: any spelling of one of these with some apostrophes left out maps to
# it ("dont" -> "don't", "couldn'tve" -> "couldn't've"). Forms whose bare spelling is an English
# word ("we'd" / "wed", "he'll" / "hell", "it's" / "its", "let's" / "lets") are left out, as there.
_CONTRACTIONS = (
    "ain't", "aren't", "can't", "could've", "couldn't", "couldn't've", "didn't", "doesn't", "don't",
    "hadn't", "hadn't've", "hasn't", "haven't", "he'd", "he'd've", "he's", "how'd", "how'll", "how's",
    "i'd've", "i'm", "i've", "isn't", "it'd", "it'd've", "it'll", "ma'am", "mightn't", "mightn't've",
    "might've", "mustn't", "must've", "needn't", "not've", "o'clock", "oughtn't", "'ow's'at", "shan't",
    "she'd've", "she's", "should've", "shouldn't", "shouldn't've", "somebody'd've", "somebody'll",
    "somebody's", "someone'd", "someone'd've", "someone'll", "someone's", "something'd",
    "something'd've", "something'll", "that's", "there'd", "there'd've", "there're", "there's",
    "they'd", "they'd've", "they'll", "they're", "they've", "'twas", "wasn't", "we'd've", "we've",
    "weren't", "what'll", "what're", "what's", "what've", "when's", "where'd", "where's", "where've",
    "who'd", "who'd've", "who'll", "who's", "who've", "why'll", "why're", "why's", "won't",
    "would've", "wouldn't", "wouldn't've", "y'all", "y'all'll", "y'all'd've", "you'd", "you'd've",
    "you'll", "you're", "you've",
)


def _contraction_spellings() -> dict[str, str]:
  """Every spelling with a non-empty subset of a contraction's apostrophes removed -> the contraction."""
  out = {}
  for word in _CONTRACTIONS:
    parts = word.split("'")
    for kept in itertools.product(("'", ""), repeat=len(parts) - 1):
      spelling = parts[0] + "".join(k + p for k, p in zip(kept, parts[1:]))
      if spelling != word:
        out[spelling] = word
  return out


_CONTRACTION_FIXES = _contraction_spellings()


def _process_punctuation(text: str) -> str:
  out = text
  thousands = _THOUSANDS_COMMA.search(text) is not None
  for p in _PUNCT:
    # Tested on the original text, as in the script: "yes, no" -> "yes no", "t-shirt" -> "t shirt".
    if thousands or p + " " in text or " " + p in text:
      out = out.replace(p, "")
    else:
      out = out.replace(p, " ")
  return _PERIOD.sub("", out)


def _process_digit_article(text: str) -> str:
  words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
  return " ".join(_CONTRACTION_FIXES.get(w, w) for w in words if w not in _ARTICLES)


def normalize_answer(text: str) -> str:
  """The official VQA v2 normalisation: "The Two Dogs." -> "2 dogs", "Yes!" -> "yes"."""
  if not isinstance(text, str):
    raise ValueError(f"normalize_answer takes a string, got {type(text).__name__} {text!r}.")
  text = text.replace("\n", " ").replace("\t", " ").strip()
  return _process_digit_article(_process_punctuation(text))


def _as_references(references: str | Sequence[str], what: str) -> list[str]:
  """A reference list from a list of strings or one string (a single exact answer)."""
  refs = [references] if isinstance(references, str) else list(references)
  if not refs:
    raise ValueError(f"{what}: no reference answers; need at least one.")
  bad = [r for r in refs if not isinstance(r, str)]
  if bad:
    raise ValueError(f"{what}: reference answers must be strings, got {bad[0]!r} ({type(bad[0]).__name__}).")
  return refs


def vqa_accuracy(prediction: str, references: str | Sequence[str]) -> float:
  """VQA accuracy as the official VQA v2 evaluation computes it, both sides normalised.

  With n references: the mean over the n leave-one-out subsets (n - 1 references each) of
  min(#references in the subset equal to the prediction / 3, 1). With VQA v2's ten answers, 3
  matches score 0.9 (not 1.0: the seven subsets without a match's annotator have 3, the three with
  one left out have 2), 2 matches 0.6, 4 or more 1.0. Fewer than ten references get the same rule
  over those given (2 of 2 matching: each subset has 1, so 1/3). Exactly one reference (the
  shapes world has one exact answer per question) is an exact-match question: 1.0 or 0.0, as the
  rule would give 0 to every prediction with no reference left in its one subset.
  """
  if not isinstance(prediction, str):
    raise ValueError(f"vqa_accuracy: prediction must be a string, got {type(prediction).__name__} "
                     f"{prediction!r}.")
  refs = _as_references(references, "vqa_accuracy")
  pred = normalize_answer(prediction)
  matches = sum(normalize_answer(r) == pred for r in refs)
  n = len(refs)
  if n == 1:
    return float(matches)
  # Leaving out a matching reference leaves matches - 1; leaving out any other leaves matches.
  return (matches * min((matches - 1) / 3.0, 1.0) + (n - matches) * min(matches / 3.0, 1.0)) / n


def _check_aligned(what: str, **columns: Sequence) -> int:
  lengths = {name: len(col) for name, col in columns.items()}
  if len(set(lengths.values())) != 1:
    raise ValueError(f"{what}: inputs must have one entry per question, got lengths {lengths}.")
  n = next(iter(lengths.values()))
  if n == 0:
    raise ValueError(f"{what}: no questions to score.")
  return n


def accuracy_by_type(predictions: Sequence[str], references: Sequence[str | Sequence[str]],
                     types: Sequence[str]) -> dict[str, float]:
  """{"acc": mean over all questions, "acc_<type>": mean over each question type present}.

  references[i] is question i's reference list, or its one answer as a string.
  """
  _check_aligned("accuracy_by_type", predictions=predictions, references=references, types=types)
  scores = [vqa_accuracy(p, r) for p, r in zip(predictions, references)]
  by_type: dict[str, list[float]] = collections.defaultdict(list)
  for score, qtype in zip(scores, types):
    by_type[qtype].append(score)
  out = {"acc": float(sum(scores) / len(scores))}
  for qtype in sorted(by_type):
    out[f"acc_{qtype}"] = float(sum(by_type[qtype]) / len(by_type[qtype]))
  return out


def _most_frequent(answers: Sequence[str]) -> str:
  # Ties go to the alphabetically first answer, so the result does not depend on the order.
  counts = collections.Counter(answers)
  return min(counts, key=lambda a: (-counts[a], a))


def majority_answers(answers: Sequence[str], types: Sequence[str]) -> dict[str, str]:
  """The most frequent normalised answer of each question type (ties: alphabetically first)."""
  _check_aligned("majority_answers", answers=answers, types=types)
  by_type: dict[str, list[str]] = collections.defaultdict(list)
  for answer, qtype in zip(answers, types):
    by_type[qtype].append(normalize_answer(answer))
  return {qtype: _most_frequent(a) for qtype, a in sorted(by_type.items())}


def majority_baseline(train_answers: Sequence[str], train_types: Sequence[str],
                      eval_references: Sequence[str | Sequence[str]], eval_types: Sequence[str]
                      ) -> dict[str, float]:
  """accuracy_by_type of always giving each question type's most frequent training answer.

  The floor a model that ignores the image (and learned only the answer prior) reaches. An eval
  type with no training answers gets the overall most frequent training answer.
  """
  per_type = majority_answers(train_answers, train_types)
  fallback = _most_frequent([normalize_answer(a) for a in train_answers])
  predictions = [per_type.get(t, fallback) for t in eval_types]
  return accuracy_by_type(predictions, eval_references, eval_types)
