"""Transformer building blocks shared by every tower: attention, MLP, encoder, posembs.

Every parameter carries logical axis names (see vljax/parallel/sharding.py); the
residual stream is constrained to ("batch", "length", "act_embed") between blocks.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Dtype = Any
ACT = ("batch", "length", "act_embed")  # logical names of the residual stream
REMAT_POLICIES = {
    "none": None,
    "full": None,  # save nothing, recompute the whole block
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
ATTENTION_IMPLS = (None, "xla", "cudnn")

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


def layer_norm(*, dtype: Dtype, param_dtype: Dtype, name: str, axis_name: str | None = "embed"):
  """LayerNorm with logically named scale/bias; statistics always in float32."""
  return nn.LayerNorm(dtype=dtype, param_dtype=param_dtype, name=name, force_float32_reductions=True,
                      scale_init=partitioned(nn.initializers.ones, (axis_name,)),
                      bias_init=partitioned(zeros, (axis_name,)))


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
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in, fan_out = self.fan_axes
    init = nn.initializers.xavier_uniform(in_axis=fan_in, out_axis=fan_out)
    kernel = self.param("kernel", partitioned(init, self.names), self.kernel_shape, self.param_dtype)
    bias_shape = tuple(self.kernel_shape[a] for a in fan_out)
    bias = self.param("bias", partitioned(zeros, tuple(self.names[a] for a in fan_out)), bias_shape,
                      self.param_dtype)
    y = jnp.einsum(self.equation, x.astype(self.dtype), kernel.astype(self.dtype))
    return y + bias.astype(self.dtype)


class MlpBlock(nn.Module):
  """Dense -> GELU -> Dense, width -> mlp_dim -> width."""
  mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = dense(self.mlp_dim, ("embed", "mlp"), name="fc1", **kw)(x)
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    h = nn.gelu(h)
    return dense(width, ("mlp", "embed"), name="fc2", **kw)(h)


class MultiHeadAttention(nn.Module):
  """Multi-head attention via jax.nn.dot_product_attention (XLA or cuDNN flash)."""
  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str | None = None
  decode: bool = False  # reserved for the decoder's KV cache (not built yet)

  @nn.compact
  def __call__(self, x_q: jax.Array, x_kv: jax.Array | None = None, *,
               mask: jax.Array | None = None, is_causal: bool = False) -> jax.Array:
    """x_q [B,T,D], x_kv [B,S,D] (default x_q), mask bool broadcastable to [B,heads,T,S]."""
    check_choice("attention_impl", self.attention_impl, ATTENTION_IMPLS)
    x_kv = x_q if x_kv is None else x_kv
    width = x_q.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
    head_dim = width // self.num_heads

    def proj(name):
      return EinsumDense("bld,dhk->blhk", (width, self.num_heads, head_dim), ("embed", "heads", "kv"),
                         fan_axes=((0,), (1, 2)), name=name, **kw)

    q, k, v = proj("query")(x_q), proj("key")(x_kv), proj("value")(x_kv)  # [B, L, heads, head_dim]
    k, v = self._kv_cache_hook(k, v)
    # Its XLA path takes QK^T in float32 (preferred_element_type) and softmaxes there, even for bf16.
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal,
                                       implementation=self.attention_impl)
    return EinsumDense("blhk,hkd->bld", (self.num_heads, head_dim, width), ("heads", "kv", "embed"),
                       fan_axes=((0, 1), (2,)), name="out", **kw)(out)

  def _kv_cache_hook(self, k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Where an autoregressive decoder will append k/v to a "cache" collection."""
    if self.decode:
      raise NotImplementedError("KV-cache decoding is not implemented yet (decode=True)")
    return k, v


class EncoderBlock(nn.Module):
  """Pre-LN transformer block: x + MHA(LN(x)), then x + MLP(LN(x))."""
  mlp_dim: int
  num_heads: int
  causal: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, None]:
    """Returns (x, None) so the same block works under nn.scan."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.with_logical_constraint(x, ACT)
    y = layer_norm(name="ln1", **kw)(x)
    y = MultiHeadAttention(self.num_heads, attention_impl=self.attention_impl, name="attn", **kw)(
        y, mask=mask, is_causal=self.causal)
    x = x + y
    y = layer_norm(name="ln2", **kw)(x)
    x = x + MlpBlock(self.mlp_dim, name="mlp", **kw)(y)
    return nn.with_logical_constraint(x, ACT), None


class Encoder(nn.Module):
  """`depth` EncoderBlocks (looped or nn.scan'ed, optionally remat'ed) + final LayerNorm."""
  depth: int
  mlp_dim: int
  num_heads: int
  causal: bool = False
  scan: bool = False
  remat: str = "none"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    check_choice("remat", self.remat, REMAT_POLICIES)
    chex.assert_rank(x, 3)
    block_cls = EncoderBlock
    if self.remat != "none":
      # Under scan, CSE across iterations is impossible anyway; prevent_cse would only slow it.
      block_cls = nn.remat(EncoderBlock, prevent_cse=not self.scan, policy=REMAT_POLICIES[self.remat])
    kw = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads, causal=self.causal, dtype=self.dtype,
              param_dtype=self.param_dtype, attention_impl=self.attention_impl)
    if self.scan:
      stack = nn.scan(block_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=nn.broadcast, length=self.depth,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = stack(name="layers", **kw)(x, mask)
    else:
      for i in range(self.depth):
        x, _ = block_cls(name=f"block_{i}", **kw)(x, mask)
    return layer_norm(name="encoder_norm", dtype=self.dtype, param_dtype=self.param_dtype)(x)


def unstack_layers(params: dict, depth: int) -> dict:
  """Params of a scan=True Encoder -> the equivalent scan=False tree (block_0, block_1, ...)."""
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
  def __call__(self, x: jax.Array) -> jax.Array:
    _, length, width = x.shape
    if length > self.max_len:
      raise ValueError(f"sequence length {length} exceeds max_len {self.max_len}")
    pe = self.param("pos_embedding", partitioned(nn.initializers.normal(0.02), ("length", "embed")),
                    (self.max_len, width), self.param_dtype)
    return x + pe[:length].astype(x.dtype)[None]
