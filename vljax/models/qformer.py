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

from vljax.models import flops, layers
from vljax.models.layers import DEFAULT_ACTIVATION, DEFAULT_NORM_EPS, Dtype, check_choice, partitioned
from vljax.models.text import text_settings

MASKS = ("unimodal", "causal", "bidirectional")
QUERY_DEFAULTS = dict(num_queries=32, cross_every=2)


def qformer_settings(given: dict) -> dict:
  """A Q-Former's config (a text variant and text keys, num_queries, cross_every) -> every setting, checked."""
  given = dict(given)
  query = {k: given.pop(k, v) for k, v in QUERY_DEFAULTS.items()}
  for key, value in query.items():
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f"Q-Former {key}={value!r} is invalid; valid: an integer >= 1")
  if "variant" not in given:
    raise ValueError(f"a Q-Former's settings need variant=... (a text variant: its width, depth, heads), got {given}")
  return dict(text_settings(**given), **query)


def make_qformer(settings: dict, module_kw: dict, name: str = "qformer") -> "QFormer":
  """The QFormer of qformer_settings() with a model's module options (dtypes, attention_impl)."""
  s, kw = settings, module_kw
  return QFormer(s["width"], s["depth"], s["mlp_dim"], s["num_heads"], s["vocab_size"], s["max_len"],
                 s["num_queries"], s["cross_every"], s["pad_id"], s["activation"], s["norm_eps"],
                 dtype=kw.get("dtype", jnp.float32), param_dtype=kw.get("param_dtype", jnp.float32),
                 attention_impl=kw.get("attention_impl"), name=name)


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


def text_half(settings: dict) -> flops.Part:
  """The params of a Q-Former's text half as one part of no FLOPs: a model that runs the queries alone."""
  blocks = tuple(f"qformer/encoder/block_{i}/{m}" for i in range(settings["depth"]) for m in ("mlp", "ln2"))
  return flops.Part("qformer/text_half", ("qformer/embedding", "qformer/posemb") + blocks)


def qformer_parts(settings: dict, name: str, passes: list[tuple[int, int]], memory: tuple[str, int, int],
                  reads: str) -> list[flops.Part]:
  """Passes of the Q-Former through its blocks (parts "<name>/block_i", each owning the params of its
  block that the passes use): `passes` as (queries, ids) per pass; self-attention and MLPs over all
  positions, cross-attention from the queries alone."""
  t, d = settings, settings["width"]
  source, s, dm = memory
  parts, last = [], reads
  used = ["attn", "ln1"] + (["mlp_query", "ln2_query"] if any(q for q, _ in passes) else []) + (
      ["mlp", "ln2"] if any(n for _, n in passes) else [])
  for i in range(t["depth"]):
    cross = ["cross_attn", "ln_cross"] if i % t["cross_every"] == 0 and any(q for q, _ in passes) else []
    dense = attention = kv = 0.0
    for queries, ids in passes:
      n = queries + ids
      dense, attention = dense + 8 * n * d * d + 4 * n * d * t["mlp_dim"], attention + 4 * n * n * d
      if queries and i % t["cross_every"] == 0:
        kv += 4 * s * dm * d
        dense, attention = dense + 4 * queries * d * d + 4 * s * dm * d, attention + 4 * queries * s * d
    inputs = {last: 0.0, **({source: kv} if kv else {})}
    params = tuple(f"qformer/encoder/block_{i}/{m}" for m in used + cross)
    parts.append(flops.Part(f"{name}/block_{i}", params, dense, attention, inputs))
    last = parts[-1].name
  return parts
