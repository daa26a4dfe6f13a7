"""Two towers (CLIP, SigLIP, LiT): image and text encoders projected into one L2-normalised space."""

from __future__ import annotations

import math
from typing import Any

import chex
import jax
import jax.numpy as jnp
from flax import linen as nn

from vljax.models.layers import ATTENTION_IMPLS, REMAT_POLICIES, check_choice, partitioned
from vljax.models.text import TextTransformer, text_settings
from vljax.models.vit import ViT, vit_settings

# Keys of the model config (besides "name") and their defaults.
TWO_TOWER_DEFAULTS: dict[str, Any] = dict(
    embed_dim=128, image=None, text=None,
    logit_scale_init=1 / 0.07,  # CLIP; SigLIP uses 10 with logit_bias_init=-10
    logit_bias_init=None, max_logit_scale=100.0,
    dtype="float32", param_dtype="float32", scan=False, remat="none", attention_impl=None,
)
DTYPES = ("float32", "bfloat16", "float16")


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """x / ||x|| over the last axis, in float32."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


class TwoTower(nn.Module):
  """Params: img/... (tower + img/head), txt/... (tower + txt/head), t (log scale), b (bias, SigLIP)."""
  img: ViT
  txt: TextTransformer
  logit_scale_init: float = 1 / 0.07
  logit_bias_init: float | None = None
  max_logit_scale: float = 100.0

  @nn.compact
  def __call__(self, image: jax.Array | None = None, text: jax.Array | None = None,
               train: bool = False) -> dict[str, jax.Array]:
    """Returns img_emb/img_tokens (if image), txt_emb/txt_tokens (if text), logit_scale[, logit_bias]."""
    out = {}
    if image is not None:
      pooled, out["img_tokens"] = self.img(image, train=train)
      out["img_emb"] = l2_normalize(pooled)
    if text is not None:
      pooled, out["txt_tokens"] = self.txt(text, train=train)
      out["txt_emb"] = l2_normalize(pooled)
    if image is not None and text is not None:
      chex.assert_equal_shape([out["img_emb"], out["txt_emb"]])

    # Learn t = log(scale) so the scale stays positive; clamp as CLIP does to keep training stable.
    t = self.param("t", partitioned(nn.initializers.constant(math.log(self.logit_scale_init)), ()), (),
                   jnp.float32)
    out["logit_scale"] = jnp.exp(jnp.minimum(t, math.log(self.max_logit_scale)))
    if self.logit_bias_init is not None:
      out["logit_bias"] = self.param("b", partitioned(nn.initializers.constant(self.logit_bias_init), ()), (),
                                     jnp.float32)
    return out

  @classmethod
  def from_config(cls, cfg: dict[str, Any]) -> "TwoTower":
    """Build from a model config dict (keys: TWO_TOWER_DEFAULTS; "name" already removed)."""
    c = resolve_config(cfg)
    shared = dict(out_dim=c["embed_dim"], scan=c["scan"], remat=c["remat"],
                  attention_impl=c["attention_impl"], dtype=jnp.dtype(c["dtype"]),
                  param_dtype=jnp.dtype(c["param_dtype"]))
    return cls(img=ViT(**c["image"], **shared), txt=TextTransformer(**c["text"], **shared),
               logit_scale_init=c["logit_scale_init"], logit_bias_init=c["logit_bias_init"],
               max_logit_scale=c["max_logit_scale"])


def resolve_config(cfg: dict[str, Any]) -> dict[str, Any]:
  """Validate a two_tower config and fill every default; image/text become full tower settings."""
  unknown = sorted(set(cfg) - set(TWO_TOWER_DEFAULTS))
  if unknown:
    raise ValueError(f"Unknown two_tower config keys {unknown}; valid: {sorted(TWO_TOWER_DEFAULTS)}")
  c = dict(TWO_TOWER_DEFAULTS, **cfg)
  for key in ("dtype", "param_dtype"):
    c[key] = _dtype_name(c[key])
    check_choice(key, c[key], DTYPES)
  check_choice("remat", c["remat"], REMAT_POLICIES)
  check_choice("attention_impl", c["attention_impl"], ATTENTION_IMPLS)
  for key, settings in (("image", vit_settings), ("text", text_settings)):
    tower = dict(c[key] or {})
    if "variant" not in tower:
      raise ValueError(f"two_tower config needs {key}=dict(variant=...), got {c[key]!r}")
    c[key] = settings(**tower)
  return c


def _dtype_name(value: Any) -> Any:
  """A dtype-like (jnp.bfloat16, "bfloat16") -> its name; values that are no dtype pass through."""
  try:
    return jnp.dtype(value).name
  except TypeError:
    return value
