"""Transformer building blocks shared by every tower: attention, MLP, encoder, posembs.

Every parameter carries logical axis names (see vljax/parallel/sharding.py); the
residual stream is constrained to ("batch", "length", "act_embed") between blocks.
"""

from __future__ import annotations

import functools
from typing import Any

import chex
import jax
from absl import logging
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.ad_checkpoint import checkpoint_name

Dtype = Any
ACT = ("batch", "length", "act_embed")  # logical names of the residual stream
# Activations tagged with checkpoint_name in the blocks below; remat policies save some of them.
MATMUL_OUTPUTS = ("query", "key", "value", "attention_out", "mlp_hidden", "mlp_out")
REMAT_POLICIES = {
    "none": None,  # no remat: the backward pass reads every forward activation
    "minimal": jax.checkpoint_policies.save_only_these_names(*MATMUL_OUTPUTS),  # recompute the cheap rest
    "save_qkv": jax.checkpoint_policies.save_only_these_names("query", "key", "value"),
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole block
}
ATTENTION_IMPLS = (None, "xla", "cudnn")
# The collection MultiHeadAttention sows its attention probabilities into when an apply makes it mutable.
ATTENTION_MAPS = "attention_maps"
# MLP nonlinearities by config name.
ACTIVATIONS = {
    "gelu_tanh": functools.partial(nn.gelu, approximate=True),  # big_vision, SigLIP ("gelu_pytorch_tanh")
    "gelu": functools.partial(nn.gelu, approximate=False),  # exact erf: open_clip, HF "gelu"
    "quick_gelu": lambda x: x * nn.sigmoid(1.702 * x),  # OpenAI CLIP
}
DEFAULT_ACTIVATION = "gelu_tanh"
DEFAULT_NORM_EPS = 1e-6  # flax's and big_vision's; CLIP's torch LayerNorms use 1e-5
# Where a Transformer's LayerNorms sit: "pre" (ViT, GPT-2: each branch reads LN(x), one final LayerNorm);
# "post" (BERT, BLIP's text transformers: LN(x + branch(x)) after each residual, the input normalised
# (BERT's embedding LayerNorm), no final one).
NORM_POSITIONS = ("pre", "post")

default_kernel_init = nn.initializers.xavier_uniform()
zeros = nn.initializers.zeros


def partitioned(init, names: tuple[str | None, ...]):
  """Shorthand: an initializer whose param carries logical axis `names`."""
  return nn.with_logical_partitioning(init, names)


def dense(features: int, names: tuple[str, str], *, dtype: Dtype, param_dtype: Dtype,
          name: str, kernel_init=default_kernel_init, use_bias: bool = True) -> nn.Dense:
  """nn.Dense whose kernel is named `names` and bias names[-1]."""
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
                  kernel_init=partitioned(kernel_init, names),
                  bias_init=partitioned(zeros, names[-1:]))


def layer_norm(*, dtype: Dtype, param_dtype: Dtype, name: str, axis_name: str | None = "embed",
               epsilon: float = DEFAULT_NORM_EPS):
  """LayerNorm with logically named scale/bias; statistics always in float32."""
  return nn.LayerNorm(epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, name=name, force_float32_reductions=True,
                      scale_init=partitioned(nn.initializers.ones, (axis_name,)),
                      bias_init=partitioned(zeros, (axis_name,)))


def tower_head(pooled: jax.Array, out_dim: int, *, head: bool, use_bias: bool, what: str, dtype: Dtype,
               param_dtype: Dtype) -> jax.Array:
  """A tower's linear head "head" to out_dim, inside the calling module; head=False keeps the pooled
  vector, whose width must then be out_dim (SigLIP's image tower)."""
  if head:
    return dense(out_dim, ("embed", None), name="head", use_bias=use_bias, dtype=dtype,
                 param_dtype=param_dtype)(pooled)
  if pooled.shape[-1] != out_dim:
    raise ValueError(f"{what} head=False makes its width {pooled.shape[-1]} the embedding, but the embedding "
                     f"size is {out_dim}; use head=True or a width equal to it")
  return pooled


def check_choice(what: str, value, valid) -> None:
  """Raise ValueError naming `value` and the `valid` options when it is not one of them."""
  if value not in valid:
    raise ValueError(f"Unknown {what} {value!r}; valid: {sorted(valid, key=str)}")


class EinsumDense(nn.Module):
  """einsum(equation, x, kernel) + bias over the kernel's output axes.

  Used instead of nn.DenseGeneral, which inits a flat kernel and reshapes it: under a mesh
  that applies 3 logical names to a 2-D array and fails.
  """
  equation: str
  kernel_shape: tuple[int, ...]
  names: tuple[str, ...]
  fan_axes: tuple[tuple[int, ...], tuple[int, ...]]  # (fan-in axes, fan-out axes) of the kernel
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in, fan_out = self.fan_axes
    init = nn.initializers.xavier_uniform(in_axis=fan_in, out_axis=fan_out)
    kernel = self.param("kernel", partitioned(init, self.names), self.kernel_shape, self.param_dtype)
    y = jnp.einsum(self.equation, x.astype(self.dtype), kernel.astype(self.dtype))
    if not self.use_bias:
      return y
    bias_shape = tuple(self.kernel_shape[a] for a in fan_out)
    bias = self.param("bias", partitioned(zeros, tuple(self.names[a] for a in fan_out)), bias_shape,
                      self.param_dtype)
    return y + bias.astype(self.dtype)


class MlpBlock(nn.Module):
  """Dense -> activation (ACTIVATIONS) -> Dense, width -> mlp_dim -> width."""
  mlp_dim: int
  activation: str = DEFAULT_ACTIVATION
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    check_choice("activation", self.activation, ACTIVATIONS)
    width = x.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = dense(self.mlp_dim, ("embed", "mlp"), name="fc1", **kw)(x)
    h = checkpoint_name(nn.with_logical_constraint(h, ("batch", "length", "mlp")), "mlp_hidden")
    h = ACTIVATIONS[self.activation](h)
    return checkpoint_name(dense(width, ("mlp", "embed"), name="fc2", **kw)(h), "mlp_out")


class MultiHeadAttention(nn.Module):
  """Multi-head attention via jax.nn.dot_product_attention (XLA or cuDNN flash), with a KV cache.

  Decoding (`decode_index` given) keeps keys/values in the "cache" collection, every leaf with a
  leading batch axis so beam search can reorder it. Self-attention writes the new positions'
  keys/values at `decode_index` and attends to everything cached so far. Cross-attention
  (`cross=True`) projects the memory once, when it is passed, and reuses the cached projection
  on the steps that pass `x_kv=None`. The cache variables are created by a first call on
  full-length inputs (see decoder.init_cache), which fixes their shapes.

  An apply call that makes the ATTENTION_MAPS collection mutable also sows each call's softmax
  probabilities as "probs" (float32 [B, heads, T, S], xla_attention's formula and mask, computed beside
  the output, which stays as it was): vljax/inference/attention_maps.py reads them. Otherwise nothing is
  computed and the program is the normal one.
  """
  num_heads: int
  cross: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x_q: jax.Array, x_kv: jax.Array | None = None, *,
               mask: jax.Array | None = None, is_causal: bool = False,
               decode_index: jax.Array | None = None) -> jax.Array:
    """x_q [B,T,D], x_kv [B,S,D] (default x_q), mask bool broadcastable to [B,heads,T,S]."""
    check_choice("attention_impl", self.attention_impl, ATTENTION_IMPLS)
    width = x_q.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
    head_dim = width // self.num_heads

    def proj(name, x):  # x [B, L, any width] -> [B, L, heads, head_dim]
      # No key bias: it adds the same q.b to every logit of a query, which softmax cancels. Its true
      # gradient is 0, and Adam would turn the float noise in it into full-size updates.
      return EinsumDense("bld,dhk->blhk", (x.shape[-1], self.num_heads, head_dim), ("embed", "heads", "kv"),
                         fan_axes=((0,), (1, 2)), use_bias=name != "key", name=name, **kw)(x)

    q = checkpoint_name(proj("query", x_q), "query")
    if self.cross:
      k, v = self._cross_kv(proj, x_kv, decode_index)
    else:
      if x_kv is not None:
        raise ValueError("self-attention takes no x_kv; build the layer with cross=True")
      k, v = checkpoint_name(proj("key", x_q), "key"), checkpoint_name(proj("value", x_q), "value")
      if decode_index is not None:
        k, v, mask = self._cached_self_kv(k, v, mask, decode_index)
        is_causal = False  # the cache mask above is the causal mask
    if self.is_mutable_collection(ATTENTION_MAPS) and not self.is_initializing():  # init makes all mutable
      self.sow(ATTENTION_MAPS, "probs", attention_probs(q, k, mask, is_causal))
    out = attention(q, k, v, mask, is_causal, self.attention_impl)
    out = EinsumDense("blhk,hkd->bld", (self.num_heads, head_dim, width), ("heads", "kv", "embed"),
                      fan_axes=((0, 1), (2,)), name="out", **kw)(out)
    return checkpoint_name(out, "attention_out")

  def _cross_kv(self, proj, memory: jax.Array | None, decode_index) -> tuple[jax.Array, jax.Array]:
    """Keys/values of the memory [B, S, any width]: projected now, or (decoding, memory None) cached."""
    if decode_index is None:
      if memory is None:
        raise ValueError("cross-attention needs the memory tokens x_kv")
      return checkpoint_name(proj("key", memory), "key"), checkpoint_name(proj("value", memory), "value")
    if memory is not None:
      k, v = proj("key", memory), proj("value", memory)
      self.variable("cache", "cross_key", lambda: k).value = k
      self.variable("cache", "cross_value", lambda: v).value = v
      return k, v
    if not self.has_variable("cache", "cross_key"):
      raise ValueError("cross-attention cache is empty: pass the memory on the first decoding call")
    return self.get_variable("cache", "cross_key"), self.get_variable("cache", "cross_value")

  def _cached_self_kv(self, k, v, mask, index):
    return cached_self_kv(self, k, v, mask, index)


def cached_self_kv(module: nn.Module, k: jax.Array, v: jax.Array, mask: jax.Array | None, index: jax.Array):
  """Writes k/v [B,T,...] into `module`'s "cache" at positions index..index+T-1 (index scalar, or [B] with
  T=1); returns the whole cache and its mask. Every self-attention with a KV cache shares it."""
  initialized = module.has_variable("cache", "cached_key")
  cached_k = module.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
  cached_v = module.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
  length = k.shape[1]
  if not initialized:  # the creating call: shapes only, attend causally within the input
    causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
    return k, v, causal if mask is None else mask & causal
  max_len = cached_k.value.shape[1]
  slots = jnp.arange(max_len)
  if jnp.ndim(index) == 0:  # every sequence at the same position: write a [B, T] block
    start = (0, index, 0, 0)
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k.astype(cached_k.value.dtype), start)
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v.astype(cached_v.value.dtype), start)
    query_pos = index + jnp.arange(length)
    visible = (slots[None, :] <= query_pos[:, None])[None, None]  # [1, 1, T, max_len]
  else:  # index [B]: each sequence at its own position (prompts of unequal lengths), one token
    if length != 1:
      raise ValueError(f"per-sequence decode positions take one token per step, got {length}")
    here = (slots[None, :] == index[:, None])[:, :, None, None]  # [B, max_len, 1, 1]
    cached_k.value = jnp.where(here, k.astype(cached_k.value.dtype), cached_k.value)
    cached_v.value = jnp.where(here, v.astype(cached_v.value.dtype), cached_v.value)
    visible = (slots[None, :] <= index[:, None])[:, None, None, :]  # [B, 1, 1, max_len]
  return cached_k.value, cached_v.value, visible if mask is None else mask & visible


_ATTENTION_PATHS_LOGGED: set = set()


def _log_once(message: str, *args) -> None:
  key = message % args
  if key not in _ATTENTION_PATHS_LOGGED:
    _ATTENTION_PATHS_LOGGED.add(key)
    logging.warning(message, *args)


def attention(q, k, v, mask, is_causal: bool, impl: str | None) -> jax.Array:
  """jax.nn.dot_product_attention on the requested path, falling back to XLA when cuDNN cannot run.

  impl None picks cuDNN flash attention on GPU for bf16/fp16 and XLA otherwise. cuDNN refuses
  some shapes (head dims, dtypes, masks) and every non-GPU backend while tracing, so the fallback
  costs nothing at run time; a log line says which path each shape took.
  """
  if impl is None:
    on_gpu = jax.default_backend() == "gpu"
    impl = "cudnn" if on_gpu and q.dtype in (jnp.bfloat16, jnp.float16) else "xla"
  if impl == "cudnn":
    try:
      out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, implementation="cudnn")
      _log_once("attention: cuDNN flash path for q %s %s", q.shape, q.dtype)
      return out
    except (RuntimeError, ValueError, NotImplementedError) as e:
      _log_once("attention: cuDNN unavailable for q %s %s (%s); using XLA", q.shape, q.dtype, str(e)[:120])
  return xla_attention(q, k, v, mask, is_causal)


def xla_attention(q, k, v, mask, is_causal: bool) -> jax.Array:
  """jax.nn.dot_product_attention's XLA path (q [B,T,N,H], k/v [B,S,N,H] -> [B,T,N,H]), with the heads
  moved next to the batch for both products.

  XLA's CPU dot kernels take batch axes leading; jax.nn's [B,T,N,H] products made XLA transpose
  inside each one: a ViT-medium attention block's forward and backward ran 1.3x slower (README,
  "Attention layout and matmul kernels").
  """
  probs = attention_probs(q, k, mask, is_causal).astype(v.dtype)
  return jnp.swapaxes(jnp.einsum("bnts,bnsk->bntk", probs, jnp.swapaxes(v, 1, 2)), 1, 2)


def attention_probs(q, k, mask, is_causal: bool) -> jax.Array:
  """float32 attention probabilities [B, N, T, S] of q [B,T,N,H], k [B,S,N,H]: xla_attention's weights.

  As jax.nn: QK^T accumulated in float32 even for bf16, scaled, masked, softmaxed in float32.
  """
  q, k = (jnp.swapaxes(t, 1, 2) for t in (q, k))  # [B, N, L, H]
  logits = jnp.einsum("bntk,bnsk->bnts", q, k, preferred_element_type=jnp.promote_types(q.dtype, jnp.float32))
  logits = logits * jnp.asarray(q.shape[-1] ** -0.5, logits.dtype)
  if is_causal:
    causal = jnp.tril(jnp.ones(logits.shape[-2:], bool))
    mask = causal if mask is None else mask & causal
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.asarray(-0.7 * jnp.finfo(jnp.float32).max, logits.dtype))
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


class TransformerBlock(nn.Module):
  """Pre-LN block: x + MHA(LN(x)) [+ cross-MHA(LN(x), memory)], then x + MLP(LN(x)); norm_position="post"
  (BERT): LN(x + MHA(x)) [, LN(x + cross-MHA(x, memory))], then LN(x + MLP(x)), the same params. encoder_branch:
  it also owns `enc_attn`, the bidirectional self-attention a call with bidirectional=True uses instead of `attn`,
  all else shared (BLIP's decoder and image-grounded encoder differ only in self-attention)."""
  mlp_dim: int
  num_heads: int
  causal: bool = False
  cross_attention: bool = False
  encoder_branch: bool = False
  activation: str = DEFAULT_ACTIVATION
  norm_eps: float = DEFAULT_NORM_EPS
  norm_position: str = "pre"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, memory: jax.Array | None = None,
               decode_index: jax.Array | None = None, bidirectional: bool = False) -> tuple[jax.Array, None]:
    """Returns (x, None) so the same block works under nn.scan."""
    if bidirectional and not self.encoder_branch:
      raise ValueError("bidirectional=True runs the block's encoder branch: build it with encoder_branch=True")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, attention_impl=self.attention_impl)
    dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm_kw = dict(dtypes, epsilon=self.norm_eps)
    check_choice("norm_position", self.norm_position, NORM_POSITIONS)
    post = self.norm_position == "post"

    def residual(x, norm_name, branch):  # pre: x + f(LN(x)); post: LN(x + f(x))
      norm = layer_norm(name=norm_name, **norm_kw)
      return norm(x + branch(x)) if post else x + branch(norm(x))

    x = nn.with_logical_constraint(x, ACT)
    attn = MultiHeadAttention(self.num_heads, name="enc_attn" if bidirectional else "attn", **kw)
    x = residual(x, "ln1", lambda y: attn(y, mask=mask, is_causal=self.causal and not bidirectional,
                                          decode_index=decode_index))
    if self.cross_attention:
      cross = MultiHeadAttention(self.num_heads, cross=True, name="cross_attn", **kw)
      x = residual(x, "ln_cross", lambda y: cross(y, memory, decode_index=decode_index))
    x = residual(x, "ln2", MlpBlock(self.mlp_dim, self.activation, name="mlp", **dtypes))
    return nn.with_logical_constraint(x, ACT), None


class Transformer(nn.Module):
  """`depth` TransformerBlocks (looped or nn.scan'ed, optionally remat'ed) + final LayerNorm; with
  norm_position="post" the LayerNorm `encoder_norm` normalises the input instead (BERT's embedding
  LayerNorm) and the blocks end in their own.

  Encoder (ViT, text towers) or decoder (causal, cross-attention to `memory`, KV cache when
  `decode_index` is given) from the same blocks.
  """
  depth: int
  mlp_dim: int
  num_heads: int
  causal: bool = False
  cross_attention: bool = False
  encoder_branch: bool = False  # the blocks' enc_attn (TransformerBlock), run by bidirectional=True
  scan: bool = False
  remat: str = "none"
  activation: str = DEFAULT_ACTIVATION
  norm_eps: float = DEFAULT_NORM_EPS
  norm_position: str = "pre"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, memory: jax.Array | None = None,
               decode_index: jax.Array | None = None, bidirectional: bool = False) -> jax.Array:
    check_choice("remat", self.remat, REMAT_POLICIES)
    chex.assert_rank(x, 3)
    block_cls = TransformerBlock
    if self.remat != "none":
      # Under scan, CSE across iterations is impossible anyway; prevent_cse would only slow it.
      # bidirectional (argument 5, counting self) picks a branch: static, not traced.
      block_cls = nn.remat(TransformerBlock, prevent_cse=not self.scan, policy=REMAT_POLICIES[self.remat],
                           static_argnums=(5,))
    kw = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads, causal=self.causal,
              cross_attention=self.cross_attention, encoder_branch=self.encoder_branch,
              activation=self.activation, norm_eps=self.norm_eps, norm_position=self.norm_position,
              dtype=self.dtype, param_dtype=self.param_dtype, attention_impl=self.attention_impl)
    check_choice("norm_position", self.norm_position, NORM_POSITIONS)
    norm = layer_norm(name="encoder_norm", dtype=self.dtype, param_dtype=self.param_dtype, epsilon=self.norm_eps)
    if self.norm_position == "post":
      x = norm(x)
    if self.scan:
      # The cache stacks its layers on axis 1, so that every cache leaf keeps batch on axis 0; recorded
      # attention maps stack theirs on axis 0 (scan drops a collection it is not given).
      stack = nn.scan(block_cls, variable_axes={"params": 0, "cache": 1, ATTENTION_MAPS: 0},
                      split_rngs={"params": True},
                      in_axes=nn.broadcast, length=self.depth,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = stack(name="layers", **kw)(x, mask, memory, decode_index, bidirectional)
    else:
      for i in range(self.depth):
        x, _ = block_cls(name=f"block_{i}", **kw)(x, mask, memory, decode_index, bidirectional)
    return x if self.norm_position == "post" else norm(x)


def unstack_layers(params: dict, depth: int) -> dict:
  """Params of a scan=True Transformer -> the equivalent scan=False tree (block_0, block_1, ...)."""
  params = dict(params)
  stacked = nn.meta.unbox(params.pop("layers"))
  for i in range(depth):
    params[f"block_{i}"] = jax.tree.map(lambda p, i=i: p[i], stacked)
  return params


# ---- position embeddings ---------------------------------------------------------------

def posemb_sincos_1d(length: int, width: int, temperature: float = 10_000.0) -> jax.Array:
  """Fixed sin/cos position embedding [length, width] (Transformer paper)."""
  if width % 2:
    raise ValueError(f"sincos1d needs an even width, got {width}")
  omega = 1.0 / temperature ** (np.arange(width // 2) / (width // 2))
  angles = np.arange(length)[:, None] * omega[None, :]
  return jnp.asarray(np.concatenate([np.sin(angles), np.cos(angles)], axis=1), jnp.float32)


def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.0) -> jax.Array:
  """Fixed 2D sin/cos position embedding [h*w, width] (MoCo v3 / big_vision)."""
  if width % 4:
    raise ValueError(f"sincos2d needs a width divisible by 4, got {width}")
  y, x = np.mgrid[:h, :w]
  omega = 1.0 / temperature ** (np.arange(width // 4) / (width // 4))
  y = y.reshape(-1)[:, None] * omega[None, :]
  x = x.reshape(-1)[:, None] * omega[None, :]
  pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
  return jnp.asarray(pe, jnp.float32)


class LearnedPosEmb(nn.Module):
  """Learned position embedding [max_len, width]; adds its first L rows to x [B, L, width]."""
  max_len: int
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, offset: jax.Array | int = 0) -> jax.Array:
    """x [B, L, width] gets rows offset..offset+L-1 (offset > 0 when decoding step by step; an
    offset [B] gives each sequence its own)."""
    _, length, width = x.shape
    if length > self.max_len:
      raise ValueError(f"sequence length {length} exceeds max_len {self.max_len}")
    pe = self.param("pos_embedding", partitioned(nn.initializers.normal(0.02), ("length", "embed")),
                    (self.max_len, width), self.param_dtype)
    if jnp.ndim(offset) == 1:
      return x + pe[offset[:, None] + jnp.arange(length)].astype(x.dtype)
    return x + jax.lax.dynamic_slice_in_dim(pe, offset, length).astype(x.dtype)[None]
