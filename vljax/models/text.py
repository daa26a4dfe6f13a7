"""Text Transformer: token ids -> embed + posemb -> (causal or padding-masked) encoder -> pool [-> head].

pool="cls" is CoCa's unimodal text decoder: a learned [CLS] appended after the padding, whose row
alone masks pad keys (the token rows stay plain causal, as a decoder continuing from them sees
them); its output after the final LayerNorm is the pooled vector.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
from flax import linen as nn

from vljax.models import layers
from vljax.models.layers import (ACTIVATIONS, DEFAULT_ACTIVATION, DEFAULT_NORM_EPS, NORM_POSITIONS, Dtype, check_choice,
                                 partitioned)
from vljax.models.pooling import MAPHead, gather_last, masked_mean

TEXT_VARIANTS: dict[str, dict[str, int]] = {
    "mu": dict(width=32, depth=2, mlp_dim=64, num_heads=2),  # tests only
    "shapes-64": dict(width=64, depth=2, mlp_dim=256, num_heads=2),  # CPU demo
    "S": dict(width=384, depth=12, mlp_dim=1536, num_heads=6),
    "B": dict(width=512, depth=12, mlp_dim=2048, num_heads=8),  # CLIP's text tower
    "L": dict(width=768, depth=12, mlp_dim=3072, num_heads=12),
    "So400m": dict(width=1152, depth=27, mlp_dim=4304, num_heads=16),
    "g": dict(width=1408, depth=40, mlp_dim=6144, num_heads=16),
}
POOLS = ("last", "first", "mean", "map", "cls")
ARCH_KEYS = ("width", "depth", "mlp_dim", "num_heads", "vocab_size", "max_len", "causal", "pool", "pad_id",
             "head", "head_bias", "activation", "norm_eps", "norm_position")
SHARED_DEFAULTS = dict(vocab_size=32_000, max_len=64, causal=False, pool="last", pad_id=0,
                       head=True,  # linear head to the two-tower embedding; False: width is the embedding
                       head_bias=True, activation=DEFAULT_ACTIVATION, norm_eps=DEFAULT_NORM_EPS,
                       norm_position="pre")  # "post": BERT's LayerNorms (layers.NORM_POSITIONS)


def text_settings(variant: str, **overrides: Any) -> dict[str, Any]:
  """Variant name + overrides -> every architecture hyperparameter of a TextTransformer."""
  check_choice("text variant", variant, TEXT_VARIANTS)
  cfg = dict(TEXT_VARIANTS[variant], **SHARED_DEFAULTS)
  for key, value in overrides.items():
    check_choice("text key", key, ARCH_KEYS)
    if value is not None:
      cfg[key] = value
  check_choice("text pool", cfg["pool"], POOLS)
  check_choice("text activation", cfg["activation"], ACTIVATIONS)
  check_choice("text norm_position", cfg["norm_position"], NORM_POSITIONS)
  if cfg["pool"] == "cls" and not cfg["causal"]:
    raise ValueError("text pool='cls' appends [CLS] after the padding for a causal tower (CoCa's unimodal "
                     "decoder), but causal=False; set causal=True or another pool")
  return cfg


class TextTransformer(nn.Module):
  """Ids [B, L] (right-padded with pad_id) -> (pooled [B, out_dim or width], tokens [B, L, width])."""
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  vocab_size: int
  max_len: int
  causal: bool = False
  pool: str = "last"
  pad_id: int = 0
  head: bool = True
  head_bias: bool = True
  activation: str = DEFAULT_ACTIVATION
  norm_eps: float = DEFAULT_NORM_EPS
  norm_position: str = "pre"
  out_dim: int | None = None  # linear head after pooling (two-tower projection), when `head`
  scan: bool = False
  remat: str = "none"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, ids: jax.Array, train: bool = False, *, tokens_only: bool = False,
               decode_index: jax.Array | None = None) -> tuple[jax.Array | None, jax.Array]:
    """(pooled, tokens); tokens_only: (None, tokens) with no [CLS] and no pooling, as a decoder
    continuing from this tower reads them; decode_index: the same, one KV-cached step of a causal tower."""
    chex.assert_rank(ids, 2)
    batch, length = ids.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    valid = ids != self.pad_id  # [B, L]
    check_choice("text pool", self.pool, POOLS)
    if decode_index is not None and not self.causal:
      raise ValueError("KV-cached decoding needs a causal text tower (causal=True)")

    # 1. Token embedding + learned position embedding.
    x = nn.Embed(self.vocab_size, self.width, name="embedding", **kw,
                 embedding_init=partitioned(nn.initializers.normal(0.02), ("vocab", "embed")))(ids)
    x = layers.LearnedPosEmb(self.max_len, self.param_dtype, name="posemb")(x, 0 if decode_index is None else
                                                                            decode_index)

    # 2. Encoder. Pad keys are masked in both modes, so right-padding never changes real tokens.
    # (Rows padded with EOS instead, as SigLIP's are, hold no pad_id: every position is attended.)
    # pool="cls": only the [CLS] row masks them; the KV cache holds its own causal mask.
    tokens_only = tokens_only or decode_index is not None
    mask = valid[:, None, None, :]
    if decode_index is not None or (self.pool == "cls" and tokens_only):
      mask = None
    elif self.pool == "cls":
      x, mask = self._append_cls(x, valid)
    block_kw = dict(activation=self.activation, norm_eps=self.norm_eps)
    x = layers.Transformer(self.depth, self.mlp_dim, self.num_heads, causal=self.causal, scan=self.scan,
                           remat=self.remat, attention_impl=self.attention_impl, norm_position=self.norm_position,
                           name="encoder", **block_kw, **kw)(x, mask, decode_index=decode_index)
    if tokens_only:
      return None, x

    # 3. Pool.
    if self.pool == "cls":
      pooled, x = x[:, -1], x[:, :-1]
    elif self.pool == "last":
      # The EOS token: sees the whole caption even when causal. Without pad_id (EOS-padded rows, as
      # SigLIP's) it is the final position, which SigLIP pools.
      pooled = gather_last(x, valid)
    elif self.pool == "first":
      pooled = x[:, 0]
    elif self.pool == "mean":
      pooled = masked_mean(x, valid)
    else:
      pooled = MAPHead(self.num_heads, self.mlp_dim, attention_impl=self.attention_impl, name="map", **block_kw,
                       **kw)(x, valid)[:, 0]

    # 4. Optional linear head.
    if self.out_dim is not None:
      pooled = layers.tower_head(pooled, self.out_dim, head=self.head, use_bias=self.head_bias, what="text",
                                 **kw)
    chex.assert_shape(pooled, (batch, self.out_dim or self.width))
    chex.assert_shape(x, (batch, length, self.width))
    return pooled, x

  def _append_cls(self, x: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x [B, L, D] + a learned [CLS] (no position row) -> [B, L+1, D], and the key mask that hides
    pad keys from the [CLS] row alone (the causal mask comes from the encoder)."""
    batch, length, width = x.shape
    cls = self.param("cls", partitioned(nn.initializers.normal(0.02), ("embed",)), (width,), self.param_dtype)
    x = jnp.concatenate([x, jnp.broadcast_to(cls.astype(x.dtype), (batch, 1, width))], axis=1)
    keys = jnp.concatenate([valid, jnp.ones((batch, 1), bool)], axis=1)
    is_cls = jnp.arange(length + 1) == length
    return x, keys[:, None, None, :] | ~is_cls[:, None]


def make_text(variant: str, **kwargs: Any) -> TextTransformer:
  """TextTransformer from a variant name; architecture overrides and module options as keywords."""
  arch = {k: kwargs.pop(k) for k in list(kwargs) if k in ARCH_KEYS}
  return TextTransformer(**text_settings(variant, **arch), **kwargs)
