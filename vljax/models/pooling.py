"""Token sequence [B, L, D] -> one vector [B, D]: masked mean, EOS gather, MAP head."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from flax import linen as nn

from vljax.models.layers import (DEFAULT_ACTIVATION, DEFAULT_NORM_EPS, Dtype, MlpBlock, MultiHeadAttention,
                                 layer_norm, partitioned)


def masked_mean(x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Mean over axis 1 of x [B, L, D], counting only positions where mask [B, L] is True."""
  chex.assert_rank(x, 3)
  if mask is None:
    return jnp.mean(x, axis=1)
  chex.assert_shape(mask, x.shape[:2])
  m = mask.astype(jnp.float32)[..., None]
  # float32 sums: bfloat16 accumulation over hundreds of tokens loses digits.
  total = jnp.sum(x.astype(jnp.float32) * m, axis=1)
  return (total / jnp.maximum(jnp.sum(m, axis=1), 1.0)).astype(x.dtype)


def gather_last(x: jax.Array, mask: jax.Array) -> jax.Array:
  """x[b, index_b] with index_b = (number of valid tokens) - 1: the EOS of right-padded text."""
  chex.assert_rank(x, 3)
  chex.assert_shape(mask, x.shape[:2])
  index = jnp.maximum(jnp.sum(mask, axis=1) - 1, 0)
  return jnp.take_along_axis(x, index[:, None, None], axis=1)[:, 0]


class MAPHead(nn.Module):
  """Multihead attention pooling (big_vision): learned probes attend over the tokens.

  With `num_queries` > 1 it is CoCa's attentional pooler: [B, L, D] -> [B, num_queries, D].
  """
  num_heads: int
  mlp_dim: int
  num_queries: int = 1
  activation: str = DEFAULT_ACTIVATION
  norm_eps: float = DEFAULT_NORM_EPS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """x [B, L, D], mask [B, L] (True = real token) -> [B, num_queries, D]."""
    chex.assert_rank(x, 3)
    batch, _, width = x.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    probe = self.param("probe", partitioned(nn.initializers.xavier_uniform(), (None, "embed")),
                       (self.num_queries, width), self.param_dtype)
    probe = jnp.broadcast_to(probe.astype(x.dtype)[None], (batch, self.num_queries, width))
    attn_mask = None if mask is None else mask[:, None, None, :]
    x = MultiHeadAttention(self.num_heads, cross=True, attention_impl=self.attention_impl, name="attn", **kw)(
        probe, x, mask=attn_mask)
    y = layer_norm(name="ln", epsilon=self.norm_eps, **kw)(x)
    return x + MlpBlock(self.mlp_dim, self.activation, name="mlp", **kw)(y)
