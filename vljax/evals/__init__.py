"""Evaluator registry: config `evals` name -> evaluator class."""

from vljax.evals.binding import BindingEvaluator
from vljax.evals.retrieval import RetrievalEvaluator
from vljax.evals.zeroshot import ZeroShotEvaluator

EVALUATORS = {e.name: e for e in (ZeroShotEvaluator, RetrievalEvaluator, BindingEvaluator)}


def get_evaluator(name: str):
  if name not in EVALUATORS:
    raise ValueError(f"evals: unknown evaluator {name!r}; valid: {sorted(EVALUATORS)}")
  return EVALUATORS[name]
