"""BLIP-2's Q-Former (Li et al. 2023): learned queries read a frozen image encoder's tokens through
cross-attention, and a text transformer shares the queries' self-attention layers; which positions
see which is set by one attention mask per objective.

  queries [Q, W] ---------.                                                 .-> query outputs [B, Q, W]
                           >-- blocks: self-attention over [queries; text] --+
  ids -> embedding + pos -'    cross-attention, queries only, to the image     '-> text outputs [B, L, W]
                               tokens, in every `cross_every`-th block; MLP: the queries' own, the text's

MASKS (True: may attend), over the Q + L positions of a joint pass; pad keys are masked in all:
  unimodal       queries see queries, text sees text: neither sees the other (ITC)
  causal         queries see queries; text sees every query and the text up to itself (ITG)
  bidirectional  every position sees every other (ITM)
A pass of the queries alone (ids None) or of the text alone (memory None, "text") is the unimodal
pass's half, at its own cost.

Pre-LN blocks, and the names of vljax's text tower (embedding, posemb, encoder/block_i/{ln1, attn,
ln2, mlp}, encoder/encoder_norm): a text tower's weights initialise the shared part, the queries'
MLPs and cross-attention start fresh.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from vljax.models import layers
from vljax.models.layers import DEFAULT_ACTIVATION, DEFAULT_NORM_EPS, Dtype, check_choice, partitioned

MASKS = ("unimodal", "causal", "bidirectional")


def attention_mask(mode: str, num_queries: int, valid: jax.Array) -> jax.Array:
  """bool [B, 1, Q + L, Q + L] of a joint pass: MASKS[mode], pad keys (valid False) hidden."""
  check_choice("Q-Former mask", mode, MASKS)
  batch, length = valid.shape
  is_query = jnp.arange(num_queries + length) < num_queries
  if mode == "bidirectional":
    allowed = jnp.ones((num_queries + length,) * 2, bool)
  elif mode == "unimodal":
    allowed = is_query[:, None] == is_query[None, :]
  else:
    position = jnp.arange(num_queries + length)
    allowed = jnp.where(is_query[:, None], is_query[None, :], is_query[None, :] | (position[None, :] <= position[:, None]))
  keys = jnp.concatenate([jnp.ones((batch, num_queries), bool), valid], axis=1)
  return allowed[None, None] & keys[:, None, None, :]


class QFormerBlock(nn.Module):
  """x + self-attention over all positions, [queries + cross-attention to the image], then each part
  through its own MLP (queries: ln2_query/mlp_query; text: ln2/mlp)."""
  mlp_dim: int
  num_heads: int
  cross_attention: bool
  activation: str = DEFAULT_ACTIVATION
  norm_eps: float = DEFAULT_NORM_EPS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None, num_queries: int, memory: jax.Array | None) -> jax.Array:
    dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    attn_kw = dict(dtypes, attention_impl=self.attention_impl)
    norm_kw = dict(dtypes, epsilon=self.norm_eps)
    x = x + layers.MultiHeadAttention(self.num_heads, name="attn", **attn_kw)(
        layers.layer_norm(name="ln1", **norm_kw)(x), mask=mask)
    queries, text = x[:, :num_queries], x[:, num_queries:]
    if num_queries:
      if self.cross_attention and memory is not None:
        queries = queries + layers.MultiHeadAttention(self.num_heads, cross=True, name="cross_attn", **attn_kw)(
            layers.layer_norm(name="ln_cross", **norm_kw)(queries), memory)
      queries = queries + layers.MlpBlock(self.mlp_dim, self.activation, name="mlp_query", **dtypes)(
          layers.layer_norm(name="ln2_query", **norm_kw)(queries))
    if text.shape[1]:
      text = text + layers.MlpBlock(self.mlp_dim, self.activation, name="mlp", **dtypes)(
          layers.layer_norm(name="ln2", **norm_kw)(text))
    return jnp.concatenate([queries, text], axis=1)


class QFormerEncoder(nn.Module):
  """`depth` QFormerBlocks (cross-attention in blocks 0, cross_every, 2 * cross_every, ...) + LayerNorm."""
  depth: int
  mlp_dim: int
  num_heads: int
  cross_every: int = 2
  activation: str = DEFAULT_ACTIVATION
  norm_eps: float = DEFAULT_NORM_EPS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None, num_queries: int, memory: jax.Array | None) -> jax.Array:
    for i in range(self.depth):
      x = QFormerBlock(self.mlp_dim, self.num_heads, i % self.cross_every == 0, self.activation, self.norm_eps,
                       self.dtype, self.param_dtype, self.attention_impl, name=f"block_{i}")(x, mask, num_queries,
                                                                                             memory)
    return layers.layer_norm(name="encoder_norm", dtype=self.dtype, param_dtype=self.param_dtype,
                             epsilon=self.norm_eps)(x)


class QFormer(nn.Module):
  """(memory [B, N, Dv] | None, ids [B, L] | None, mode) -> (query outputs [B, Q, W] | None,
  text outputs [B, L, W] | None). Params: queries, embedding, posemb, encoder."""
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  vocab_size: int
  max_len: int
  num_queries: int = 32
  cross_every: int = 2
  pad_id: int = 0
  activation: str = DEFAULT_ACTIVATION
  norm_eps: float = DEFAULT_NORM_EPS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str | None = None

  def setup(self):
    dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.queries = self.param("queries", partitioned(nn.initializers.normal(0.02), (None, "embed")),
                              (self.num_queries, self.width), self.param_dtype)
    self.embedding = nn.Embed(self.vocab_size, self.width, name="embedding", **dtypes,
                              embedding_init=partitioned(nn.initializers.normal(0.02), ("vocab", "embed")))
    self.posemb = layers.LearnedPosEmb(self.max_len, self.param_dtype, name="posemb")
    self.encoder = QFormerEncoder(self.depth, self.mlp_dim, self.num_heads, self.cross_every, self.activation,
                                  self.norm_eps, **dtypes, attention_impl=self.attention_impl)

  def __call__(self, memory: jax.Array | None, ids: jax.Array | None, mode: str = "unimodal"
               ) -> tuple[jax.Array | None, jax.Array | None]:
    """mode: one of MASKS for a joint pass; "text" for the text alone (memory unused)."""
    parts, batch = [], (ids if ids is not None else memory).shape[0]
    with_queries = mode != "text"
    if with_queries:
      if memory is None:
        raise ValueError(f"Q-Former mode {mode!r} runs the queries, which read the image tokens: pass memory")
      parts.append(jnp.broadcast_to(self.queries.astype(self.dtype), (batch, self.num_queries, self.width)))
    if ids is not None:
      parts.append(self.posemb(self.embedding(ids)))
    x = jnp.concatenate(parts, axis=1)
    queries = self.num_queries if with_queries else 0
    if ids is None:
      mask = None  # the queries alone see each other
    elif with_queries:
      mask = attention_mask(mode, queries, ids != self.pad_id)
    else:
      mask = (ids != self.pad_id)[:, None, None, :]
    x = self.encoder(x, mask, queries, memory if with_queries else None)
    return (x[:, :queries] if with_queries else None), (x[:, queries:] if ids is not None else None)

  def vocab_logits(self, text_outputs: jax.Array) -> jax.Array:
    """Next-token logits [B, L, vocab] of text outputs: the token embedding, transposed (tied)."""
    return nn.with_logical_constraint(self.embedding.attend(text_outputs).astype(jnp.float32),
                                      ("batch", "length", "vocab"))
