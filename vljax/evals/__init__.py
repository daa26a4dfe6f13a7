"""Evaluator registry: config `evals` name -> evaluator class; and the COCO caption metrics.

Evaluators that read a `dataset` can run several times under names `<evaluator>_<label>`
(e.g. `zeroshot_imagenet`), each logging `eval/<evaluator>_<label>/<metric>`.
"""

from vljax.evals.binding import BindingEvaluator
from vljax.evals.captioning import CaptionEvaluator
from vljax.evals.coco_metrics import caption_metrics
from vljax.evals.retrieval import RetrievalEvaluator
from vljax.evals.vqa import VQAEvaluator
from vljax.evals.zeroshot import ZeroShotEvaluator

EVALUATORS = {e.name: e for e in (ZeroShotEvaluator, RetrievalEvaluator, BindingEvaluator, CaptionEvaluator,
                                   VQAEvaluator)}
LABELLED = (ZeroShotEvaluator.name, RetrievalEvaluator.name)  # the ones `<name>_<label>` may name

__all__ = ["EVALUATORS", "caption_metrics", "get_evaluator"]


def get_evaluator(name: str):
  if name in EVALUATORS:
    return EVALUATORS[name]
  base, _, label = name.partition("_")
  if base in LABELLED and label:
    return EVALUATORS[base]
  raise ValueError(f"evals: unknown evaluator {name!r}; valid: {sorted(EVALUATORS)}, or "
                   f"{' / '.join(f'{b}_<label>' for b in LABELLED)} for more datasets")
