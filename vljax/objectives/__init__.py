"""Training objectives: pure losses and the name -> objective registry."""

from vljax.plugins import import_submodules
from vljax.objectives.registry import (NEW_STATE, OBJECTIVES, RUN_ARGS, ModelAccess, ObjectiveInfo,
                                       call_objective, combined_loss, get_objective, init_state, keeps_state,
                                       model_rngs, parse_objectives, register_objective, stream_rng)
from vljax.objectives.contrastive import (IMPLS, all_gather_softmax_contrastive_loss,
                                          ring_sigmoid_contrastive_loss,
                                          sigmoid_contrastive_loss, softmax_contrastive_loss)
from vljax.objectives.captioning import captioning_loss


# Each module of this package registers its objectives: a new objective is a new file.
import_submodules(__name__, __path__)

__all__ = [
    "IMPLS", "NEW_STATE", "OBJECTIVES", "RUN_ARGS", "ModelAccess", "ObjectiveInfo",
    "all_gather_softmax_contrastive_loss", "call_objective", "captioning_loss", "combined_loss", "get_objective",
    "init_state", "keeps_state", "model_rngs", "parse_objectives", "register_objective",
    "ring_sigmoid_contrastive_loss", "sigmoid_contrastive_loss", "softmax_contrastive_loss", "stream_rng",
]
