"""Pieces every captioning model shares: token embedding, causal masks, the cross-attending
decoder with its vocabulary head, and the KV-cache protocol the decoding loop drives.

Generative models (CoCa, CapPa, ...) expose three methods besides `__call__`:
  encode_image(image)                         -> {"memory": [B, S, D], "img_emb"?: [B, E]}
  caption_logits(memory, ids)                 -> float32 [B, L, vocab], teacher-forced, causal
  decode_step(ids, memory, decode_index)      -> float32 [B, T, vocab], reading and writing the
                                                 "cache" collection (keys/values of every layer)
`init_cache` and `make_step_fn` below turn them into what `vljax.decode.decode` drives;
`prefill` and `make_prompted_step_fn` continue prompts of unequal lengths, and `continue_prompts`
puts them together (traceable: jit the caller).
"""

from __future__ import annotations

from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
from flax import linen as nn

from vljax import decode as decode_lib
from vljax.models import layers
from vljax.models.layers import Dtype, partitioned


def causal_mask(length: int) -> jax.Array:
  """bool [1, 1, L, L]: query i sees keys 0..i."""
  return jnp.tril(jnp.ones((length, length), bool))[None, None]


class TokenEmbedding(nn.Module):
  """Ids [B, L] -> token embedding + learned position embedding (rows offset..offset+L-1)."""
  vocab_size: int
  width: int
  max_len: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    self.embedding = nn.Embed(self.vocab_size, self.width, dtype=self.dtype, param_dtype=self.param_dtype,
                              embedding_init=partitioned(nn.initializers.normal(0.02), ("vocab", "embed")))
    self.posemb = layers.LearnedPosEmb(self.max_len, self.param_dtype)

  def __call__(self, ids: jax.Array, offset: jax.Array | int = 0, *, replace: jax.Array | None = None,
               replacement: jax.Array | None = None) -> jax.Array:
    """`replace` bool [B]: those rows' token embeddings become `replacement` [width] (e.g. [MASK])."""
    return self.add_positions(self.tokens(ids, replace=replace, replacement=replacement), offset)

  def tokens(self, ids: jax.Array, *, replace: jax.Array | None = None,
             replacement: jax.Array | None = None) -> jax.Array:
    """Token embeddings alone, no positions."""
    x = self.embedding(ids)
    if replace is not None:
      x = jnp.where(replace[:, None, None], replacement.astype(x.dtype), x)
    return x

  def add_positions(self, x: jax.Array, offset: jax.Array | int = 0) -> jax.Array:
    return self.posemb(x, offset)

  def attend(self, x: jax.Array) -> jax.Array:
    """Hidden states [..., width] -> logits over the vocabulary, tied to the token embedding."""
    return self.embedding.attend(x)


class CrossDecoder(nn.Module):
  """Embedded tokens [B, L, D] + memory [B, S, D] -> float32 logits [B, L, vocab].

  Causal self-attention (the mask comes from the caller, or from the KV cache when decoding),
  cross-attention to the memory in every block, final LayerNorm, linear vocabulary head (with bias).
  norm_position="post": BERT's LayerNorms (layers.Transformer). head_transform: BERT's LM head, a
  dense + activation + LayerNorm `head_transform` before the vocabulary projection (BLIP's decoder).
  encoder_branch: the blocks also hold a bidirectional self-attention; a call with encode=True runs
  it and returns the hidden states [B, L, D] (BLIP's image-grounded encoder, sharing the rest).
  """
  depth: int
  mlp_dim: int
  num_heads: int
  vocab_size: int
  activation: str = layers.DEFAULT_ACTIVATION
  norm_eps: float = layers.DEFAULT_NORM_EPS
  norm_position: str = "pre"
  head_transform: bool = False
  encoder_branch: bool = False
  scan: bool = False
  remat: str = "none"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, memory: jax.Array | None, mask: jax.Array | None = None,
               decode_index: jax.Array | None = None, encode: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = layers.Transformer(self.depth, self.mlp_dim, self.num_heads, cross_attention=True,
                           encoder_branch=self.encoder_branch, scan=self.scan, remat=self.remat,
                           activation=self.activation, norm_eps=self.norm_eps, norm_position=self.norm_position,
                           attention_impl=self.attention_impl, name="decoder", **kw)(
                               x, mask, memory, decode_index, encode)
    if encode:
      return x
    if self.head_transform:
      x = HeadTransform(self.activation, self.norm_eps, name="head_transform", **kw)(x)
    return vocab_logits(layers.dense(self.vocab_size, ("embed", "vocab"), name="logits", **kw), x)


class HeadTransform(nn.Module):
  """BERT's prediction-head transform, hidden [..., D] -> LayerNorm(activation(dense(hidden)))."""
  activation: str = layers.DEFAULT_ACTIVATION
  norm_eps: float = layers.DEFAULT_NORM_EPS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = layers.dense(x.shape[-1], ("embed", "mlp"), name="dense", **kw)(x)
    x = layers.ACTIVATIONS[self.activation](x)
    return layers.layer_norm(name="norm", axis_name="mlp", epsilon=self.norm_eps, **kw)(x)


def vocab_logits(head: nn.Module, x: jax.Array) -> jax.Array:
  """Hidden states -> float32 logits [B, L, vocab]: cross-entropy and decoding read log-probs."""
  return nn.with_logical_constraint(head(x).astype(jnp.float32), ("batch", "length", "vocab"))


def encode_and_caption(model: nn.Module, image: jax.Array | None, text: jax.Array | None,
                       train: bool) -> dict[str, jax.Array]:
  """The `__call__` of an image-conditioned text model: memory (if image), caption_logits (if both)."""
  out = {} if image is None else model.encode_image(image, train)
  if image is not None and text is not None:
    out["caption_logits"] = model.caption_logits(out["memory"], text)
  return out


def token_log_probs(logits: jax.Array, ids: jax.Array, pad_id: int) -> jax.Array:
  """Teacher-forced log p(ids[:, t+1] | ids[:, :t+1]) summed over real tokens -> [B].

  logits [B, L, V] are the model's outputs on ids [B, L] (BOS first): position t predicts t+1.
  """
  chex.assert_rank(logits, 3)
  chex.assert_shape(ids, logits.shape[:2])
  targets = ids[:, 1:]
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(targets != pad_id, picked, 0.0), axis=1)


def init_cache(model: nn.Module, params: Any, memory: jax.Array | None, cache_len: int,
               batch_size: int | None = None) -> Any:
  """A fresh KV cache: self-attention slots for `cache_len` positions, cross-attention keys/values
  of `memory` computed once (a text-only model has no memory: give batch_size)."""
  ids = jnp.zeros((memory.shape[0] if memory is not None else batch_size, cache_len), jnp.int32)
  _, variables = model.apply({"params": params}, ids, memory, decode_index=jnp.zeros((), jnp.int32),
                             method="decode_step", mutable=["cache"])
  return variables["cache"]


def make_step_fn(model: nn.Module, params: Any) -> Callable:
  """step_fn(tokens [N], cache, index) -> (logits [N, V], cache), as vljax.decode.decode wants."""
  def step_fn(tokens, cache, index):
    logits, variables = model.apply({"params": params, "cache": cache}, tokens[:, None], None,
                                    decode_index=index, method="decode_step", mutable=["cache"])
    return logits[:, 0], variables["cache"]
  return step_fn


def prefill(model: nn.Module, params: Any, cache: Any, memory: jax.Array | None, ids: jax.Array
            ) -> tuple[jax.Array, Any]:
  """Writes prompt ids [B, P] into cache slots 0..P-1 (one pass, causal within the prompt);
  -> (logits [B, P, V] at the ids' outputs, cache)."""
  logits, variables = model.apply({"params": params, "cache": cache}, ids, memory,
                                  decode_index=jnp.zeros((), jnp.int32), method="decode_step", mutable=["cache"])
  return logits, variables["cache"]


def make_prompted_step_fn(model: nn.Module, params: Any, start: jax.Array) -> Callable:
  """step_fn continuing prompts: step i of sequence b sits at position start[b] + i (beam search's
  rows are sequence-major, K beams of each: each gets its sequence's start)."""
  def step_fn(tokens, cache, index):
    rows = jnp.repeat(start, tokens.shape[0] // start.shape[0])
    logits, variables = model.apply({"params": params, "cache": cache}, tokens[:, None], None,
                                    decode_index=rows + index, method="decode_step", mutable=["cache"])
    return logits[:, 0], variables["cache"]
  return step_fn


def continue_prompts(model: nn.Module, params: Any, memory: jax.Array | None, ids: jax.Array, lengths: jax.Array,
                     options: decode_lib.DecodeOptions, *, cache_len: int, eos_id: int, pad_id: int,
                     rng: jax.Array | None = None, shift: int = 0) -> decode_lib.DecodeResult:
  """Continuations of prompts ids [B, P] (right-padded, `lengths` [B] real tokens) until eos_id.

  shift: positions the model's own prompt holds besides the ids (LLaVA splices shift + 1 image tokens
  in for one <image> id and keeps them in its self-attention cache; it has no memory to cross-attend).
  """
  cache = init_cache(model, params, None if shift else memory, cache_len, ids.shape[0])
  logits, cache = prefill(model, params, cache, memory, ids)
  # Step 0 feeds each prompt's last token at its own position; generation continues from there.
  first = jnp.take_along_axis(ids, (lengths - 1)[:, None], axis=1)[:, 0]
  step_fn = make_prompted_step_fn(model, params, lengths - 1 + shift)
  if shift:
    # A prompt ending in "<image>" ends with a spliced image token, which re-feeding the "<image>" id
    # would overwrite: step 0 takes the prefill's logits there instead and leaves the cache as it is.
    last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]
    fed = step_fn

    def step_fn(tokens, cache, index):
      from_prefill = lambda: (jnp.repeat(last, tokens.shape[0] // last.shape[0], axis=0), cache)
      return jax.lax.cond(index == 0, from_prefill, lambda: fed(tokens, cache, index))
  return decode_lib.decode(step_fn, cache, ids.shape[0], bos_id=first, eos_id=eos_id, pad_id=pad_id,
                           options=options, rng=rng)


def make_recompute_step_fn(model: nn.Module, params: Any, memory: jax.Array | None, cache_len: int,
                           batch_size: int | None = None) -> tuple[Callable, Any]:
  """The no-cache baseline: every step reruns the decoder on the whole prefix so far.

  Returns (step_fn, state); the state (token buffer and memory) stands in for the cache, with the
  batch on axis 0 so beam search can reorder it the same way (a text-only model has no memory:
  give batch_size).
  """
  batch = memory.shape[0] if memory is not None else batch_size
  state = {"ids": jnp.zeros((batch, cache_len), jnp.int32), "memory": memory}

  def step_fn(tokens, state, index):
    ids = jax.lax.dynamic_update_slice(state["ids"], tokens[:, None], (0, index))
    logits = model.apply({"params": params}, state["memory"], ids, method="caption_logits")
    return jax.lax.dynamic_index_in_dim(logits, index, axis=1, keepdims=False), dict(state, ids=ids)
  return step_fn, state
