"""Model config dicts -> validated settings: the part every model's `from_config` shares."""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp

from vljax.models.layers import ATTENTION_IMPLS, REMAT_POLICIES, check_choice

DTYPES = ("float32", "bfloat16", "float16")
# Keys every model takes, with their defaults.
COMMON_DEFAULTS: dict[str, Any] = dict(dtype="float32", param_dtype="float32", scan=False, remat="none",
                                       attention_impl=None)


def resolve(model_name: str, cfg: dict[str, Any], defaults: dict[str, Any],
            towers: dict[str, Callable[..., dict]]) -> dict[str, Any]:
  """Fill defaults, reject unknown keys, expand each tower dict with its settings function.

  `towers` maps a config key (e.g. "image") to vit_settings / text_settings; the key's value
  must hold at least `variant`.
  """
  defaults = dict(COMMON_DEFAULTS, **defaults)
  unknown = sorted(set(cfg) - set(defaults))
  if unknown:
    raise ValueError(f"Unknown {model_name} config keys {unknown}; valid: {sorted(defaults)}")
  c = dict(defaults, **cfg)
  for key in ("dtype", "param_dtype"):
    c[key] = _dtype_name(c[key])
    check_choice(key, c[key], DTYPES)
  check_choice("remat", c["remat"], REMAT_POLICIES)
  check_choice("attention_impl", c["attention_impl"], ATTENTION_IMPLS)
  for key, settings in towers.items():
    tower = dict(c[key] or {})
    if "variant" not in tower:
      raise ValueError(f"{model_name} config needs {key}=dict(variant=...), got {c[key]!r}")
    c[key] = settings(**tower)
  return c


def check_image_tokens_only(model_name: str, image: dict[str, Any]) -> None:
  """Models that read the ViT's tokens (not its pooled output) must not build a MAP head for nothing."""
  if image["pool"] == "map":
    raise ValueError(f"{model_name} reads the image tower's tokens; image.pool='map' would add an unused "
                     f"attention-pooling head; valid: 'gap', 'max', 'tok'")


def module_kwargs(c: dict[str, Any]) -> dict[str, Any]:
  """The switches every module of a model shares: scan, remat, attention impl, dtypes."""
  return dict(scan=c["scan"], remat=c["remat"], attention_impl=c["attention_impl"],
              dtype=jnp.dtype(c["dtype"]), param_dtype=jnp.dtype(c["param_dtype"]))


def dtypes(module_kw: dict[str, Any] | None) -> dict[str, Any]:
  """The dtype / param_dtype part of module_kwargs() (float32 where absent)."""
  kw = module_kw or {}
  return dict(dtype=kw.get("dtype", jnp.float32), param_dtype=kw.get("param_dtype", jnp.float32))


def _dtype_name(value: Any) -> Any:
  """A dtype-like (jnp.bfloat16, "bfloat16") -> its name; values that are no dtype pass through."""
  try:
    return jnp.dtype(value).name
  except TypeError:
    return value
