"""Evaluators: config `evals` name -> evaluator class (vljax/evals/registry.py); and the COCO
caption metrics.

Each evaluator file registers its class with `@register_evaluator(name)`: adding an evaluator is
adding a file. Evaluators that read a `dataset` can run several times under names
`<evaluator>_<label>` (e.g. `zeroshot_imagenet`), each logging `eval/<evaluator>_<label>/<metric>`.
"""

from vljax.evals.coco_metrics import caption_metrics
from vljax.evals.registry import EVALUATORS, get_evaluator, register_evaluator
from vljax.plugins import import_submodules

# Each module of this package registers its evaluators: a new evaluator is a new file.
import_submodules(__name__, __path__)

__all__ = ["EVALUATORS", "caption_metrics", "get_evaluator", "register_evaluator"]
