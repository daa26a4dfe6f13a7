"""Model registry: config `model.name` -> flax module class, filled by each model file's
`@register_model(name)`; nothing outside a model's file lists its name."""

from __future__ import annotations

from typing import Any, Callable

from flax import linen as nn

from vljax.plugins import add_unique

MODELS: dict[str, type[nn.Module]] = {}
# Names kept for old configs: name -> the function translating such a config to a registered model's.
ALIASES: dict[str, Callable[[Any], dict[str, Any]]] = {}


def register_model(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
  """Decorator adding a model class (it must define `from_config(cfg: dict) -> nn.Module`) as `name`."""
  def wrap(cls: type[nn.Module]) -> type[nn.Module]:
    if not callable(getattr(cls, "from_config", None)):
      raise TypeError(f"{cls.__name__} needs a classmethod from_config(cfg) to be registered as model {name!r}")
    add_unique(MODELS, "model", name, cls)
    return cls
  return wrap


def register_alias(name: str, translate: Callable[[Any], dict[str, Any]]) -> None:
  """Keep `name` working for old configs: `translate` turns its config into a registered model's."""
  if name in MODELS:
    raise ValueError(f"alias {name!r} would hide the registered model {MODELS[name].__name__}")
  ALIASES[name] = translate


def canonical_config(model_cfg: Any) -> dict[str, Any]:
  """model_cfg as a plain dict; an alias's config translated to the registered model's."""
  cfg = _to_dict(model_cfg)
  translate = ALIASES.get(cfg.get("name"))
  return translate(cfg) if translate else cfg


def get_model(model_cfg: Any) -> nn.Module:
  """Build the module named by model_cfg["name"] from a dict or ml_collections.ConfigDict."""
  cfg = canonical_config(model_cfg)
  name = cfg.pop("name", None)
  if name not in MODELS:
    raise ValueError(f"Unknown model name {name!r}; valid: {sorted(MODELS)} (and {sorted(ALIASES)}, "
                     f"older names of composable configs)")
  return MODELS[name].from_config(cfg)


def _to_dict(cfg: Any) -> dict[str, Any]:
  """ConfigDict / FrozenConfigDict / Mapping -> plain nested dict (a copy)."""
  if hasattr(cfg, "to_dict"):
    return cfg.to_dict()
  if isinstance(cfg, dict):
    return {k: _to_dict(v) if isinstance(v, dict) or hasattr(v, "to_dict") else v for k, v in cfg.items()}
  raise TypeError(f"model config must be a dict or ConfigDict, got {type(cfg).__name__}")
