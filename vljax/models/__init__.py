"""Models: config `model.name` -> flax module class with a `from_config(dict)` builder.

Each model file registers its class with `@register_model(name)` and declares its own spec
(capabilities, inputs, outputs, FLOP count): adding a model is adding a file.
"""

from vljax.models.registry import MODELS, get_model, register_model
from vljax.plugins import import_submodules

# Each module of this package registers its models: a new model is a new file.
import_submodules(__name__, __path__)

__all__ = ["MODELS", "get_model", "register_model"]
