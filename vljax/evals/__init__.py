"""Evaluator registry: config `evals` name -> evaluator class; and the COCO caption metrics."""

from vljax.evals.binding import BindingEvaluator
from vljax.evals.captioning import CaptionEvaluator
from vljax.evals.coco_metrics import caption_metrics
from vljax.evals.retrieval import RetrievalEvaluator
from vljax.evals.vqa import VQAEvaluator
from vljax.evals.zeroshot import ZeroShotEvaluator

EVALUATORS = {e.name: e for e in (ZeroShotEvaluator, RetrievalEvaluator, BindingEvaluator, CaptionEvaluator,
                                   VQAEvaluator)}

__all__ = ["EVALUATORS", "caption_metrics", "get_evaluator"]


def get_evaluator(name: str):
  if name not in EVALUATORS:
    raise ValueError(f"evals: unknown evaluator {name!r}; valid: {sorted(EVALUATORS)}")
  return EVALUATORS[name]
