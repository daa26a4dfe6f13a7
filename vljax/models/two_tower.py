"""Two towers (CLIP, SigLIP, LiT): image and text encoders projected into one L2-normalised space."""

from __future__ import annotations

import math
from typing import Any

import chex
import jax
import jax.numpy as jnp
from flax import linen as nn

from vljax.models import flops, model_config
from vljax.models.capabilities import EMBEDDINGS, IMAGE_FEATURES
from vljax.models.layers import partitioned
from vljax.models.registry import register_model
from vljax.models.text import TextTransformer, text_settings
from vljax.models.vit import ViT, vit_settings

# Keys of the model config (besides "name") and their defaults.
TWO_TOWER_DEFAULTS: dict[str, Any] = dict(
    embed_dim=128, image=None, text=None,
    logit_scale_init=1 / 0.07,  # CLIP; SigLIP uses 10 with logit_bias_init=-10
    logit_bias_init=None, max_logit_scale=100.0,
)


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """x / ||x|| over the last axis, in float32."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def temperature_param(module: nn.Module, scale_init: float) -> jax.Array:
  """Param t = log(logit scale): learned in log space so the scale stays positive."""
  return module.param("t", partitioned(nn.initializers.constant(math.log(scale_init)), ()), (), jnp.float32)


def clamp_log_scale(params: dict, max_scale: float) -> dict:
  """params with t (log logit scale) clipped to [0, log max_scale]: the last step of every update, as
  CLIP's `logit_scale.clamp_(0, ln 100)`. The forward pass uses exp(t) as it is: a clamp inside it
  would have zero gradient above the cap, and a scale that crossed it could never come back."""
  if "t" not in params:  # frozen, or a model without a learned temperature
    return params
  return {**params, "t": jnp.clip(params["t"], 0.0, math.log(max_scale))}


def logit_params(module: nn.Module, scale_init: float, bias_init: float | None) -> dict[str, jax.Array]:
  """logit_scale (param t) and, when bias_init is given, logit_bias (param b) of a compact module."""
  out = {"logit_scale": jnp.exp(temperature_param(module, scale_init))}
  if bias_init is not None:
    out["logit_bias"] = module.param("b", partitioned(nn.initializers.constant(bias_init), ()), (),
                                     jnp.float32)
  return out


@register_model("two_tower")
class TwoTower(nn.Module):
  """Params: img/... (tower + img/head), txt/... (tower + txt/head), t (log scale), b (bias, SigLIP).

  A tower with head=False has no img/head (txt/head): its pooled width is the embedding (SigLIP's
  image tower).
  """
  capabilities = frozenset({EMBEDDINGS, IMAGE_FEATURES})
  inputs = ("image", "text")
  output_names = frozenset({"img_emb", "img_tokens", "txt_emb", "txt_tokens", "logit_scale", "logit_bias"})
  output_settings = {"logit_bias": "model.logit_bias_init (SigLIP: -10.0)"}  # the setting that adds each
  rng_streams = ("dropout",)
  img: ViT
  txt: TextTransformer
  logit_scale_init: float = 1 / 0.07
  logit_bias_init: float | None = None
  max_logit_scale: float = 100.0  # the trainer clamps exp(t) to it after each update

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

    out.update(logit_params(self, self.logit_scale_init, self.logit_bias_init))
    return out

  def training_outputs(self) -> frozenset[str]:
    """output_names, less the bias when there is none (CLIP, LiT)."""
    return self.output_names - (set() if self.logit_bias_init is not None else {"logit_bias"})

  @classmethod
  def from_config(cls, cfg: dict[str, Any]) -> "TwoTower":
    """Build from a model config dict (keys: TWO_TOWER_DEFAULTS; "name" already removed)."""
    c = resolve_config(cfg)
    shared = dict(out_dim=c["embed_dim"], **model_config.module_kwargs(c))
    return cls(img=ViT(**c["image"], **shared), txt=TextTransformer(**c["text"], **shared),
               logit_scale_init=c["logit_scale_init"], logit_bias_init=c["logit_bias_init"],
               max_logit_scale=c["max_logit_scale"])

  @classmethod
  def flop_parts(cls, cfg: dict[str, Any], inputs: flops.Inputs) -> list[flops.Part]:
    """Forward FLOPs by part (vljax/models/flops.py): the two towers, each with its head."""
    c = resolve_config(cfg)
    image, _ = flops.vit_parts(c["image"], inputs.image_size, "img", c["embed_dim"], c["scan"])
    return image + flops.text_parts(c["text"], inputs.text_len, "txt", c["embed_dim"], c["scan"])


def resolve_config(cfg: dict[str, Any]) -> dict[str, Any]:
  """Validate a two_tower config and fill every default; image/text become full tower settings."""
  c = model_config.resolve("two_tower", cfg, TWO_TOWER_DEFAULTS, {"image": vit_settings, "text": text_settings})
  for key in ("image", "text"):
    if not c[key]["head"] and c[key]["width"] != c["embed_dim"]:
      raise ValueError(f"two_tower {key}.head=False makes the {key} width {c[key]['width']} the embedding, but "
                       f"embed_dim is {c['embed_dim']}; set embed_dim={c[key]['width']} or {key}.head=True")
  return c
