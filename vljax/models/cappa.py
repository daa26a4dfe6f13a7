"""CapPa (Tschannen et al. 2023): a ViT trained only by captioning, with parallel prediction.

  image -> ViT tokens (memory) ---------------------------.
  text ids -> token embedding -> decoder (causal self-attention, cross-attention) -> logits

Parallel prediction: during training a `parallel_fraction` of the examples (default 0.75) get
all-[MASK] decoder inputs and no causal mask, so the decoder must read every token off the
image instead of leaning on the caption's prefix. Without contrastive embeddings, zero-shot,
retrieval and binding score a caption by its log-likelihood given the image.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import linen as nn

from vljax.models import flops, model_config
from vljax.models.capabilities import GENERATION, IMAGE_FEATURES, LIKELIHOOD
from vljax.models.decoder import CrossDecoder, TokenEmbedding, causal_mask
from vljax.models.layers import partitioned
from vljax.models.registry import register_model
from vljax.models.text import text_settings
from vljax.models.vit import ViT, vit_settings

CAPPA_DEFAULTS: dict[str, Any] = dict(image=None, text=None, parallel_fraction=0.75)


@register_model("cappa")
class CapPa(nn.Module):
  """Params: img (ViT), txt (embeddings), mask_embedding, dec (decoder + vocab head)."""
  img: ViT
  text: dict[str, Any]  # text_settings() of the decoder
  parallel_fraction: float = 0.75
  module_kw: dict[str, Any] | None = None
  capabilities = frozenset({GENERATION, LIKELIHOOD, IMAGE_FEATURES})
  inputs = ("image", "text")
  output_names = frozenset({"memory", "caption_logits"})  # of the training pass
  rng_streams = ("dropout", "mask")  # "mask": which examples get parallel prediction

  def setup(self):
    kw = dict(self.module_kw or {})
    dtypes = model_config.dtypes(kw)
    t = self.text
    self.txt = TokenEmbedding(t["vocab_size"], t["width"], t["max_len"], **dtypes)
    self.mask_embedding = self.param("mask_embedding", partitioned(nn.initializers.normal(0.02), ("embed",)),
                                     (t["width"],), dtypes["param_dtype"])
    self.dec = CrossDecoder(t["depth"], t["mlp_dim"], t["num_heads"], t["vocab_size"], **kw)

  def encode_image(self, image: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    return {"memory": self.img(image, train=train)[1]}

  def caption_logits(self, memory: jax.Array, ids: jax.Array) -> jax.Array:
    mask = causal_mask(ids.shape[1])
    return self.dec(self.txt(ids), memory, mask)

  def decode_step(self, ids: jax.Array, memory: jax.Array | None, decode_index: jax.Array) -> jax.Array:
    return self.dec(self.txt(ids, decode_index), memory, decode_index=decode_index)

  def __call__(self, image: jax.Array | None = None, text: jax.Array | None = None,
               train: bool = False) -> dict[str, jax.Array]:
    """memory (if image) and caption_logits (if both; parallel prediction when training)."""
    out = {} if image is None else self.encode_image(image, train)
    if image is None or text is None:
      return out
    batch, length = text.shape
    mask = causal_mask(length)
    if train and self.parallel_fraction > 0:
      parallel = jax.random.bernoulli(self.make_rng("mask"), self.parallel_fraction, (batch,))
      x = self.txt(text, replace=parallel, replacement=self.mask_embedding)
      mask = mask | parallel[:, None, None, None]
    else:
      x = self.txt(text)
    out["caption_logits"] = self.dec(x, out["memory"], mask)
    return out

  @classmethod
  def from_config(cls, cfg: dict[str, Any]) -> "CapPa":
    c = resolve_config(cfg)
    kw = model_config.module_kwargs(c)
    return cls(img=ViT(**c["image"], **kw), text=c["text"], parallel_fraction=c["parallel_fraction"],
               module_kw=kw)

  @classmethod
  def flop_parts(cls, cfg: dict[str, Any], inputs: flops.Inputs) -> list[flops.Part]:
    """Forward FLOPs by part (vljax/models/flops.py): ViT, then the decoder reading its tokens."""
    c = resolve_config(cfg)
    img, t, length = c["image"], c["text"], inputs.text_len
    parts, tokens = flops.vit_parts(img, inputs.image_size, "img", scan=c["scan"])
    parts.append(flops.Part("txt", ("txt", "mask_embedding"), reads={"text": 0.0}))
    memory = (tokens, flops.image_tokens(img, inputs.image_size), img["width"])
    parts += flops.encoder("dec/decoder", t["depth"], length, t["width"], t["mlp_dim"], "txt", c["scan"], memory)
    return parts + [flops.linear("dec/logits", 2 * length * t["width"] * t["vocab_size"], "dec/decoder/encoder_norm")]


def resolve_config(cfg: dict[str, Any]) -> dict[str, Any]:
  """Validated CapPa settings; the text settings describe the (always causal) decoder."""
  c = model_config.resolve("cappa", cfg, CAPPA_DEFAULTS, {"image": vit_settings, "text": text_settings})
  c["text"]["causal"] = True
  model_config.check_image_tokens_only("cappa", c["image"])
  if not 0.0 <= c["parallel_fraction"] <= 1.0:
    raise ValueError(f"cappa parallel_fraction must be in [0, 1], got {c['parallel_fraction']}")
  return c
