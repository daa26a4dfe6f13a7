"""Model registry: config `model.name` -> flax module class with a `from_config(dict)` builder."""

from __future__ import annotations

from typing import Any

from flax import linen as nn

from vljax.models.cappa import CapPa
from vljax.models.coca import CoCa
from vljax.models.composable import Composable
from vljax.models.flamingo import Flamingo
from vljax.models.llava import LLaVA
from vljax.models.lm import LanguageModel
from vljax.models.two_tower import TwoTower

MODELS: dict[str, type[nn.Module]] = {"two_tower": TwoTower, "coca": CoCa, "cappa": CapPa, "lm": LanguageModel, "llava": LLaVA,
                                     "flamingo": Flamingo, "composable": Composable}


def register_model(name: str, cls: type[nn.Module]) -> type[nn.Module]:
  """Add a model class (it must define `from_config(cfg: dict) -> nn.Module`)."""
  if not hasattr(cls, "from_config"):
    raise TypeError(f"{cls.__name__} needs a classmethod from_config(cfg) to be registered as {name!r}")
  MODELS[name] = cls
  return cls


def get_model(model_cfg: Any) -> nn.Module:
  """Build the module named by model_cfg["name"] from a dict or ml_collections.ConfigDict."""
  cfg = _to_dict(model_cfg)
  name = cfg.pop("name", None)
  if name not in MODELS:
    raise ValueError(f"Unknown model name {name!r}; valid: {sorted(MODELS)}")
  return MODELS[name].from_config(cfg)


def _to_dict(cfg: Any) -> dict[str, Any]:
  """ConfigDict / FrozenConfigDict / Mapping -> plain nested dict (a copy)."""
  if hasattr(cfg, "to_dict"):
    return cfg.to_dict()
  if isinstance(cfg, dict):
    return {k: _to_dict(v) if isinstance(v, dict) or hasattr(v, "to_dict") else v for k, v in cfg.items()}
  raise TypeError(f"model config must be a dict or ConfigDict, got {type(cfg).__name__}")
