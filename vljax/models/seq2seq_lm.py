"""Encoder-decoder language model with the architecture of T5 (v1.0) and T5 v1.1 / FlanT5.

  encoder: ids -> token embedding -> depth x [x + self_attn(rms(x)) ; x + mlp(rms(x))] -> rms
  decoder: ids -> the same embedding -> decoder_depth x [x + causal_self_attn(rms(x)) ;
           x + cross_attn(rms(x), encoder out) ; x + mlp(rms(x))] -> rms -> [* width**-0.5] -> vocab logits

T5's choices, all here: RMS norm without mean subtraction or bias (T5LayerNorm); no biases anywhere; no
1/sqrt(head_dim) on the attention logits (T5 folds it into its init); positions only through a bucketed
relative position bias, one table per stack in its first layer, computed there and handed to every later
layer (cross-attention has none); MLP "relu" (v1.0) or "gated-gelu" (v1.1, FlanT5: gelu_tanh(gate(x)) *
fc1(x)); vocabulary head tied to the token table (v1.0, decoder output scaled by width**-0.5 first) or a
head of its own (v1.1). vljax/convert/hf_t5.py imports Hugging Face checkpoints into it.

  model = dict(name="seq2seq_lm", lm=dict(<SETTINGS keys>))   # as python -m vljax.convert writes it
  hidden = model.apply(v, ids, method="encode")                 # mask: ids != PAD_ID
  hidden = model.apply(v, x_embedded, mask, method="encode_embeddings")  # a prefix of soft prompts + text
  logits = model.apply(v, hidden, mask, decoder_ids, method="decode_logits")  # teacher-forced
  result = generate(model, params, hidden, mask, DecodeOptions(...), eos_id=1)  # KV cache, jit the caller

Token ids: T5's padding is id 0 and its decoder starts from it (decoder_start_token_id); that is vljax's
PAD_ID, so START_ID = PAD_ID and an imported T5 vocabulary keeps its own ids (id offset 0). Decoder inputs
are [START, y0, y1, ...] (shift_right of the targets); only the encoder input is masked by padding.

Params: txt (embedding [, new_tokens]: causal_lm.Embedding), encoder and decoder (block_i: ln1, attn, [ln_cross,
cross_attn,] ln2, mlp; block_0/attn/relative_bias; final_norm), logits (an untied head: causal_lm.Head). Every
param carries logical axis names (embed, heads, kv, mlp, vocab), so the sharding rules apply as to causal_lm.
The blocks are looped (no scan, no remat), without dropout: an inference and frozen-backbone model.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from vljax import decode as decode_lib
from vljax.models import causal_lm, layers, model_config
from vljax.models.layers import ACT, Dtype, EinsumDense, check_choice, partitioned
from vljax.models.registry import register_model

PAD_ID = 0  # vljax's padding id (vljax.data.tokenizers.PAD_ID), T5's too
START_ID = PAD_ID  # T5's decoder_start_token_id is its pad id
MLPS = ("relu", "gated-gelu")
REQUIRED = ("vocab_size", "width", "depth", "num_heads", "head_dim", "mlp_dim")
SETTINGS: dict[str, Any] = dict(  # the `lm` setting's keys and defaults (T5 v1.1 / FlanT5's where T5 has one)
    **{k: None for k in REQUIRED},
    decoder_depth=None,  # None: depth
    mlp="gated-gelu", relative_buckets=32, relative_max_distance=128, norm_eps=1e-6,
    tie_embeddings=False,  # the vocabulary head is the token table (T5 v1.0)
    scale_output=False,  # decoder output * width**-0.5 before the head (T5 v1.0)
    new_token_ids=(),  # ids with rows of their own, as causal_lm's (tokens the checkpoint lacks)
    source=None)  # where the weights came from: a note, no effect on the model
NEG_INF = -0.7 * float(np.finfo(np.float32).max)  # a masked logit (finite: no NaN for an all-masked row)


# ---- relative position bias -----------------------------------------------------------------------------

def relative_buckets(relative: np.ndarray, bidirectional: bool, num_buckets: int, max_distance: int) -> np.ndarray:
  """T5's bucket of each relative position (key position - query position), in float32 as Mesh TensorFlow and
  transformers compute it: half the buckets exact distances, half log-spaced up to max_distance; bidirectional
  gives past and future keys half the buckets each, unidirectional puts every future key in bucket 0."""
  relative = np.asarray(relative, np.int64)
  out = np.zeros_like(relative)
  if bidirectional:
    num_buckets //= 2
    out += (relative > 0) * num_buckets
    distance = np.abs(relative)
  else:
    distance = -np.minimum(relative, 0)
  exact = num_buckets // 2
  log_ratio = np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(exact))  # max(., 1): no log(0)
  scaled = log_ratio / np.float32(math.log(max_distance / exact)) * np.float32(num_buckets - exact)
  large = np.minimum(exact + scaled.astype(np.int64), num_buckets - 1)
  return out + np.where(distance < exact, distance, large)


class RelativeBias(nn.Module):
  """The table "relative_bias" [buckets, heads] -> float32 bias [B or 1, heads, T, S] of queries at positions
  [B or 1, T] over keys 0..S-1 (queries sit among the keys: self-attention)."""
  num_heads: int
  num_buckets: int
  max_distance: int
  bidirectional: bool
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, positions: jax.Array, key_length: int) -> jax.Array:
    table = self.param("relative_bias", partitioned(nn.initializers.normal(0.02), (None, "heads")),
                       (self.num_buckets, self.num_heads), self.param_dtype)
    # Buckets of every relative position -(S-1)..S-1, from numpy at trace time: positions may be traced.
    buckets = jnp.asarray(relative_buckets(np.arange(1 - key_length, key_length), self.bidirectional,
                                           self.num_buckets, self.max_distance), jnp.int32)
    relative = jnp.arange(key_length)[None, None, :] - positions[..., None]  # [B or 1, T, S]
    bias = table.astype(jnp.float32)[buckets[relative + key_length - 1]]  # [B or 1, T, S, heads]
    return jnp.moveaxis(bias, -1, 1)


# ---- layers -----------------------------------------------------------------------------------------------

def attend(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None, mask: jax.Array | None) -> jax.Array:
  """softmax(q k^T + bias) v over q [B, T, N, H], k/v [B, S, N, H]; logits in float32, unscaled (T5)."""
  logits = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=jnp.float32)
  if bias is not None:
    logits = logits + bias
  if mask is not None:
    logits = jnp.where(mask, logits, NEG_INF)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bnts,bsnh->btnh", probs, v)


def project(x: jax.Array, heads: int, head_dim: int, name: str, kw: dict) -> jax.Array:
  """[B, L, width] -> [B, L, heads, head_dim], no bias (inside the calling module)."""
  return EinsumDense("bld,dhk->blhk", (x.shape[-1], heads, head_dim), ("embed", "heads", "kv"),
                     fan_axes=((0,), (1, 2)), use_bias=False, name=name, **kw)(x)


def out_projection(out: jax.Array, width: int, kw: dict) -> jax.Array:
  heads, head_dim = out.shape[-2:]
  return EinsumDense("blhk,hkd->bld", (heads, head_dim, width), ("heads", "kv", "embed"), fan_axes=((0, 1), (2,)),
                     use_bias=False, name="out", **kw)(out)


class SelfAttention(nn.Module):
  """Self-attention with T5's relative bias: the stack's first layer owns the table (relative set) and
  returns the bias it computed; later layers take it. With decode_index, the keys/values of earlier
  positions come from the KV cache (layers.cached_self_kv)."""
  num_heads: int
  head_dim: int
  causal: bool
  relative: dict[str, int] | None = None  # num_buckets, max_distance: this layer owns the table
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None, bias: jax.Array | None,
               decode_index: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    q, k, v = (project(x, self.num_heads, self.head_dim, name, kw) for name in ("query", "key", "value"))
    if decode_index is not None:
      k, v, mask = layers.cached_self_kv(self, k, v, mask, decode_index)  # its mask is causal
    elif self.causal:
      causal = jnp.tril(jnp.ones((x.shape[1], x.shape[1]), bool))[None, None]
      mask = causal if mask is None else mask & causal
    if bias is None:
      if self.relative is None:
        raise ValueError("a T5 stack's first layer computes the relative position bias; later ones take it")
      positions = jnp.reshape(0 if decode_index is None else decode_index, (-1, 1)) + jnp.arange(x.shape[1])
      bias = RelativeBias(self.num_heads, bidirectional=not self.causal, param_dtype=self.param_dtype,
                          name="relative", **self.relative)(positions, k.shape[1])
    return out_projection(attend(q, k, v, bias, mask), x.shape[-1], kw), bias


class CrossAttention(nn.Module):
  """Attention to the encoder's output (no position bias). Decoding keeps the encoder's keys, values and
  mask in the cache: computed on the call that passes the memory, read on the calls that pass None."""
  num_heads: int
  head_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, memory: jax.Array | None, memory_mask: jax.Array | None,
               decode_index: jax.Array | None) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    q = project(x, self.num_heads, self.head_dim, "query", kw)
    if memory is not None:
      k, v = (project(memory, self.num_heads, self.head_dim, name, kw) for name in ("key", "value"))
      mask = jnp.ones(memory.shape[:2], bool) if memory_mask is None else memory_mask.astype(bool)
      if decode_index is not None:  # every leaf with the batch first: beam search reorders them
        for name, value in (("cross_key", k), ("cross_value", v), ("cross_mask", mask)):
          self.variable("cache", name, lambda: value).value = value
    elif decode_index is None or not self.has_variable("cache", "cross_key"):
      raise ValueError("cross-attention needs the encoder's output: pass it on the call that creates the cache")
    else:
      k, v, mask = (self.get_variable("cache", n) for n in ("cross_key", "cross_value", "cross_mask"))
    return out_projection(attend(q, k, v, None, mask[:, None, None, :]), x.shape[-1], kw)


class Mlp(nn.Module):
  """relu: fc2(relu(fc1(x))); gated-gelu: fc2(gelu_tanh(gate(x)) * fc1(x)). No biases."""
  mlp_dim: int
  kind: str
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=False)
    up = layers.dense(self.mlp_dim, ("embed", "mlp"), name="fc1", **kw)(x)
    if self.kind == "gated-gelu":
      h = layers.ACTIVATIONS["gelu_tanh"](layers.dense(self.mlp_dim, ("embed", "mlp"), name="gate", **kw)(x)) * up
    else:
      h = nn.relu(up)
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    return layers.dense(x.shape[-1], ("mlp", "embed"), name="fc2", **kw)(h)


class Block(nn.Module):
  """Pre-norm T5 block: x + attn(ln1(x)) [, x + cross_attn(ln_cross(x), memory)], x + mlp(ln2(x))."""
  s: dict[str, Any]  # checked settings (seq2seq_settings)
  decoder: bool
  first: bool  # owns the relative bias table
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask, bias, memory, memory_mask, decode_index) -> tuple[jax.Array, jax.Array]:
    s, kw = self.s, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    rms = lambda name: causal_lm.norm("rmsnorm", s["norm_eps"], name, **kw)
    x = nn.with_logical_constraint(x, ACT)
    relative = dict(num_buckets=s["relative_buckets"], max_distance=s["relative_max_distance"])
    out, bias = SelfAttention(s["num_heads"], s["head_dim"], causal=self.decoder,
                              relative=relative if self.first else None, name="attn", **kw)(
                                  rms("ln1")(x), mask, bias, decode_index)
    x = x + out
    if self.decoder:
      x = x + CrossAttention(s["num_heads"], s["head_dim"], name="cross_attn", **kw)(
          rms("ln_cross")(x), memory, memory_mask, decode_index)
    x = x + Mlp(s["mlp_dim"], s["mlp"], name="mlp", **kw)(rms("ln2")(x))
    return nn.with_logical_constraint(x, ACT), bias


class Stack(nn.Module):
  """The encoder's (bidirectional) or the decoder's (causal, cross-attending) blocks + "final_norm"."""
  s: dict[str, Any]
  decoder: bool
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, memory: jax.Array | None = None,
               memory_mask: jax.Array | None = None, decode_index: jax.Array | None = None) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    mask = None if mask is None else mask.astype(bool)[:, None, None, :]  # padded keys
    bias = None  # the first block computes it, every later block reuses it (T5's position_bias)
    for i in range(self.s["decoder_depth"] if self.decoder else self.s["depth"]):
      x, bias = Block(self.s, self.decoder, first=i == 0, name=f"block_{i}", **kw)(
          x, mask, bias, memory, memory_mask, decode_index)
    return causal_lm.norm("rmsnorm", self.s["norm_eps"], "final_norm", **kw)(x)


# ---- the model -----------------------------------------------------------------------------------------------

@register_model("seq2seq_lm")
class Seq2SeqLM(nn.Module):
  """Params: txt (token table, shared by encoder and decoder), encoder, decoder, logits (absent when tied)."""
  text: dict[str, Any]  # seq2seq_settings(): the architecture
  module_kw: dict[str, Any] | None = None
  capabilities = frozenset()  # text only: nothing an image evaluator can use
  inputs = ("text",)
  output_names = frozenset({"encoder_out", "decoder_logits"})
  rng_streams = ()

  def setup(self):
    dtypes = model_config.dtypes(self.module_kw)
    s = self.text
    new_ids = tuple(s["new_token_ids"])
    self.txt = causal_lm.Embedding(s["vocab_size"], s["width"], 0, False, new_ids, **dtypes)
    self.encoder = Stack(s, decoder=False, **dtypes)
    self.decoder = Stack(s, decoder=True, **dtypes)
    if not s["tie_embeddings"]:
      self.logits = causal_lm.Head(s["vocab_size"], new_ids, **dtypes)

  def embed(self, ids: jax.Array) -> jax.Array:
    """Token ids [B, L] -> their rows of the shared table [B, L, width] (what encode_embeddings takes)."""
    return self.txt.tokens(ids)

  def encode(self, ids: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Encoder output [B, L, width] of ids [B, L]; mask [B, L] (default ids != PAD_ID) marks real tokens."""
    return self.encode_embeddings(self.embed(ids), ids != PAD_ID if mask is None else mask)

  def encode_embeddings(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    """Encoder output of embedded input vectors x [B, L, width], mask [B, L]: a prefix LM's soft prompts
    (e.g. BLIP-2's Q-Former outputs, projected to width) concatenated before embed(prefix ids)."""
    return self.encoder(x, mask)

  def decode_logits(self, encoder_hidden: jax.Array, encoder_mask: jax.Array, decoder_ids: jax.Array) -> jax.Array:
    """Teacher-forced float32 logits [B, T, vocab]: position t predicts the token after decoder_ids[:, t]
    (decoder_ids = shift_right(targets): START_ID first)."""
    return self.head(self.decoder(self.embed(decoder_ids), None, encoder_hidden, encoder_mask))

  def decode_step(self, ids: jax.Array, encoder_hidden: jax.Array | None, encoder_mask: jax.Array | None,
                  decode_index: jax.Array) -> jax.Array:
    """Logits of decoder ids [B, T] at positions decode_index.. (scalar, or [B] with T=1) with the KV cache
    (mutable "cache"). The call creating the cache (ids [B, cache_len], decode_index 0) takes the encoder's
    output and mask and keeps their cross-attention keys/values; later calls pass None for both."""
    return self.head(self.decoder(self.embed(ids), None, encoder_hidden, encoder_mask, decode_index))

  def head(self, h: jax.Array) -> jax.Array:
    if self.text["scale_output"]:  # T5 v1.0: the tied table's scale
      h = h * self.text["width"] ** -0.5
    return causal_lm.head_logits(self, h)

  def __call__(self, image: jax.Array | None = None, text: jax.Array | None = None,
               train: bool = False) -> dict[str, jax.Array]:
    """The text's encoder output and the decoder's logits reading it back (the text shifted right): every
    param in one pass, for init and shape checks. Input/target pairs go through encode and decode_logits."""
    del image, train  # text only; no dropout
    if text is None:
      return {}
    mask = text != PAD_ID
    hidden = self.encode(text, mask)
    return {"encoder_out": hidden, "decoder_logits": self.decode_logits(hidden, mask, shift_right(text))}

  @classmethod
  def from_config(cls, cfg: dict[str, Any]) -> "Seq2SeqLM":
    c = model_config.resolve("seq2seq_lm", cfg, dict(lm=None), {})
    if c["scan"] or c["remat"] != "none" or c["attention_impl"] is not None:
      raise ValueError("seq2seq_lm loops its blocks with XLA attention (T5's position bias is in every logit): "
                       f"scan={c['scan']}, remat={c['remat']!r}, attention_impl={c['attention_impl']!r} are not "
                       "supported; valid: the defaults (False, 'none', None)")
    return cls(text=seq2seq_settings(c["lm"]), module_kw=model_config.module_kwargs(c))


def shift_right(ids: jax.Array) -> jax.Array:
  """Targets [B, T] -> decoder inputs [B, T]: START_ID, then the targets but the last."""
  return jnp.concatenate([jnp.full_like(ids[:, :1], START_ID), ids[:, :-1]], axis=1)


def seq2seq_settings(value: Any) -> dict[str, Any]:
  """The model's `lm` setting (a dict of SETTINGS keys, e.g. a converted workdir's) -> every key, checked."""
  if not isinstance(value, dict):
    raise ValueError(f"seq2seq_lm needs lm=dict(...) of {sorted(SETTINGS)} (a workdir python -m vljax.convert "
                     f"wrote holds one), got {value!r}")
  c = causal_lm.filled_settings(value, SETTINGS, REQUIRED, "seq2seq_lm")
  check_choice("seq2seq_lm mlp", c["mlp"], MLPS)
  c["decoder_depth"] = c["decoder_depth"] or c["depth"]
  c["new_token_ids"] = causal_lm.checked_new_token_ids(c, "seq2seq_lm")
  return c


def generate(model: Seq2SeqLM, params: Any, encoder_hidden: jax.Array, encoder_mask: jax.Array,
             options: decode_lib.DecodeOptions, *, eos_id: int, cache_len: int | None = None,
             rng: jax.Array | None = None) -> decode_lib.DecodeResult:
  """Decoded continuations of the encoder's output (greedy, beam or sampled: options) from START_ID, with the
  KV cache: the cross-attention keys/values computed once, the self-attention's written step by step.
  Traceable: jit the caller with the options static. cache_len: decoder positions (default options.max_len)."""
  batch, cache_len = encoder_hidden.shape[0], cache_len or options.max_len
  if cache_len < options.max_len:
    raise ValueError(f"cache_len={cache_len} holds fewer positions than max_len={options.max_len} tokens")
  _, variables = model.apply({"params": params}, jnp.zeros((batch, cache_len), jnp.int32), encoder_hidden,
                             encoder_mask, jnp.zeros((), jnp.int32), method="decode_step", mutable=["cache"])

  def step_fn(tokens, cache, index):
    logits, variables = model.apply({"params": params, "cache": cache}, tokens[:, None], None, None, index,
                                    method="decode_step", mutable=["cache"])
    return logits[:, 0], variables["cache"]
  return decode_lib.decode(step_fn, variables["cache"], batch, bos_id=START_ID, eos_id=eos_id, pad_id=PAD_ID,
                           options=options, rng=rng)
