"""Training objectives: pure losses and the name -> objective registry."""

from vljax.objectives.registry import (OBJECTIVES, RUN_ARGS, call_objective, combined_loss, get_objective,
                                       parse_objectives, register_objective)
# Importing an objective module registers its objectives.
from vljax.objectives.contrastive import (IMPLS, all_gather_softmax_contrastive_loss,
                                          ring_sigmoid_contrastive_loss,
                                          sigmoid_contrastive_loss, softmax_contrastive_loss)
from vljax.objectives.captioning import captioning_loss

__all__ = [
    "IMPLS", "OBJECTIVES", "RUN_ARGS", "all_gather_softmax_contrastive_loss", "call_objective",
    "captioning_loss", "combined_loss", "get_objective", "parse_objectives", "register_objective", "ring_sigmoid_contrastive_loss",
    "sigmoid_contrastive_loss", "softmax_contrastive_loss",
]
