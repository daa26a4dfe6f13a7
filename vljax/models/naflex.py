"""NaFlex (SigLIP 2): a ViT over native-aspect patch sequences padded to a token budget.

  packed [B, N, P*P + 1, 3] -> patches [B, N, P*P*3] @ embedding -> + posemb resampled to each
  image's own h x w grid -> encoder (padded patches masked out of attention) -> pool over valid
  patches [-> head]

A packed image (vljax/data/naflex.py) holds N = max_patches rows: a patch's pixels in raster order,
then one extra "pixel" (row, col, valid). The packing keeps the batch an ordinary rank-4 float
array, so the train step's shardings, the runner's chunking and every evaluator carry it unchanged.
A plain [B, H, W, 3] image (model init, square evaluation sets) is read as the full grid.

Parameter names and shapes are ViT's (embedding kernel/bias, posemb/pos_embedding, cls, pre_norm,
encoder, map, head): a fixed-resolution checkpoint loads into NaflexViT and back.
"""

from __future__ import annotations

import math
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from vljax.models import layers
from vljax.models.layers import check_choice, partitioned
from vljax.models.pooling import MAPHead, masked_mean
from vljax.models.vit import POOLS, POSEMBS, ViT, max_over_tokens

PACKED_EXTRA = 1  # extra "pixels" per packed patch row: (row, col, valid)
NAFLEX_KEYS = ("posemb_grid",)  # model.image.naflex=dict(...) keys


def is_packed(image: jax.Array, patch: int) -> bool:
  """A packed NaFlex batch [B, N, P*P + 1, 3]; a plain image [B, H, W, 3] has W % P == 0 (P >= 2)."""
  return image.ndim == 4 and image.shape[2] == patch * patch + PACKED_EXTRA and image.shape[2] % patch != 0


def unpack(image: jax.Array, patch: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """packed [B, N, P*P + 1, 3] -> (patches [B, N, P*P*3], coords int32 [B, N, 2] (row, col), valid bool [B, N])."""
  batch, n, _, _ = image.shape
  pixels = image[:, :, :patch * patch].reshape(batch, n, patch * patch * 3)
  meta = image[:, :, patch * patch]
  return pixels, jnp.round(meta[..., :2]).astype(jnp.int32), meta[..., 2] > 0.5


def grid_patches(image: jax.Array, patch: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """plain [B, H, W, 3] -> the same triple as unpack: every patch of the h x w grid, in raster order,
  its pixels in (py, px, channel) order (that of a conv kernel [P, P, 3, width] flattened)."""
  batch, height, width, _ = image.shape
  if height % patch or width % patch:
    raise ValueError(f"image size {height}x{width} is not divisible by patch {patch}")
  h, w = height // patch, width // patch
  x = image.reshape(batch, h, patch, w, patch, 3).transpose(0, 1, 3, 2, 4, 5).reshape(batch, h * w, -1)
  coords = jnp.stack(jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij"), -1).reshape(1, h * w, 2)
  return x, jnp.broadcast_to(coords, (batch, h * w, 2)), jnp.ones((batch, h * w), bool)


def grid_sizes(coords: jax.Array, valid: jax.Array) -> jax.Array:
  """int32 [B, 2]: each image's patch grid (rows, cols), from its valid patches' coordinates."""
  return jnp.max(jnp.where(valid[..., None], coords + 1, 1), axis=1)


def resample_weights(grid: int, sizes: jax.Array, out: int) -> jax.Array:
  """float32 [B, out, grid]: row i resamples a length-`grid` axis to sizes[b] samples (i < sizes[b];
  later rows are unused): linear interpolation, antialiased where sizes[b] < grid (downsampling)."""
  eye = jnp.eye(grid, dtype=jnp.float32)

  def one(size):
    scale = (size.astype(jnp.float32) / grid)[None]
    return jax.image.scale_and_translate(eye, (out, grid), (0,), scale, jnp.zeros((1,), jnp.float32),
                                         method="linear", antialias=True)
  return jax.vmap(one)(sizes)


def resample_posemb(pe: jax.Array, coords: jax.Array, valid: jax.Array) -> jax.Array:
  """Learned grid pe [G*G, D] resampled to each image's h x w grid, read at each patch -> [B, N, D].
  Separable: a patch's row weights [G] times its column weights [G], one matmul with the grid."""
  gg, d = pe.shape
  grid = math.isqrt(gg)
  if grid * grid != gg:
    raise ValueError(f"NaFlex posemb has {gg} rows, not a square grid")
  sizes = grid_sizes(coords, valid)
  n = coords.shape[1]
  wy = jnp.take_along_axis(resample_weights(grid, sizes[:, 0], n), coords[..., :1], axis=1)  # [B, N, G]
  wx = jnp.take_along_axis(resample_weights(grid, sizes[:, 1], n), coords[..., 1:], axis=1)
  w = (wy[..., :, None] * wx[..., None, :]).reshape(*coords.shape[:2], gg)
  return jnp.einsum("bnk,kd->bnd", w, pe.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)


def posemb_sincos_2d_at(coords: jax.Array, width: int, temperature: float = 10_000.0) -> jax.Array:
  """layers.posemb_sincos_2d read at coords [B, N, 2] (row, col) -> [B, N, width]."""
  if width % 4:
    raise ValueError(f"sincos2d needs a width divisible by 4, got {width}")
  omega = 1.0 / temperature ** (np.arange(width // 4) / (width // 4))
  y = coords[..., 0:1].astype(jnp.float32) * omega.astype(np.float32)
  x = coords[..., 1:2].astype(jnp.float32) * omega.astype(np.float32)
  return jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], axis=-1)


class PatchEmbedding(nn.Module):
  """nn.Conv(kernel = stride = patch)'s params (kernel [P, P, 3, width], bias) applied as one matmul
  over flattened patches [B, N, P*P*3]."""
  features: int
  patch: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, patches: jax.Array) -> jax.Array:
    p = self.patch
    kernel = self.param("kernel", partitioned(nn.initializers.lecun_normal(), (None, None, None, "embed")),
                        (p, p, 3, self.features), self.param_dtype)
    bias = self.param("bias", partitioned(nn.initializers.zeros, ("embed",)), (self.features,), self.param_dtype)
    return patches.astype(self.dtype) @ kernel.reshape(p * p * 3, -1).astype(self.dtype) + bias.astype(self.dtype)


class NaflexViT(ViT):
  """ViT over packed NaFlex batches (or plain images): (pooled [B, out_dim or width], tokens [B, N, width],
  padded tokens zero). posemb_grid: the side of the learned grid when it is created (None: the grid of the
  image init sees); afterwards the params' own grid is used."""
  posemb_grid: int | None = None

  @nn.compact
  def __call__(self, image: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    chex.assert_rank(image, 4)
    check_naflex_arch(self.stem, self.posemb, self.pool, self.cls_posemb, self.patch_dropout, self.patch)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if not is_packed(image, self.patch) and (image.shape[1] % self.patch or image.shape[2] % self.patch):
      raise ValueError(f"NaFlex tower (patch {self.patch}) got an input of shape {image.shape}: neither a packed "
                       f"batch [B, N, {self.patch * self.patch + PACKED_EXTRA}, 3] (data.naflex.patch must equal the "
                       f"tower's patch) nor an image [B, H, W, 3] with sides multiples of {self.patch}")
    patches, coords, valid = (unpack if is_packed(image, self.patch) else grid_patches)(image, self.patch)
    batch, n = valid.shape
    x = PatchEmbedding(self.width, self.patch, name="embedding", **kw)(patches)
    if self.posemb == "learned":
      x = x + self._learned_posemb(image, coords, valid).astype(x.dtype)
    else:
      x = x + posemb_sincos_2d_at(coords, self.width).astype(x.dtype)
    mask = valid
    if self.pool == "tok":  # [CLS] joins after the position embedding, as in ViT
      cls = self.param("cls", partitioned(nn.initializers.zeros, ("embed",)), (self.width,), self.param_dtype)
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (batch, 1, self.width)), x], axis=1)
      mask = jnp.concatenate([jnp.ones((batch, 1), bool), valid], axis=1)

    block_kw = dict(activation=self.activation, norm_eps=self.norm_eps)
    if self.pre_norm:
      x = layers.layer_norm(name="pre_norm", epsilon=self.norm_eps, **kw)(x)
    x = layers.Transformer(self.depth, self.mlp_dim, self.num_heads, scan=self.scan, remat=self.remat,
                           attention_impl=self.attention_impl, name="encoder", **block_kw, **kw)(
                               x, mask[:, None, None, :])

    if self.pool == "tok":
      pooled, x = x[:, 0], (x if self.cls_in_tokens else x[:, 1:])
    elif self.pool == "gap":
      pooled = masked_mean(x, valid)
    elif self.pool == "max":
      pooled = max_over_tokens(jnp.where(valid[..., None], x, jnp.asarray(jnp.finfo(x.dtype).min, x.dtype)))
    else:
      pooled = MAPHead(self.num_heads, self.mlp_dim, attention_impl=self.attention_impl, name="map", **block_kw,
                       **kw)(x, valid)[:, 0]
    keep = mask if (self.pool == "tok" and self.cls_in_tokens) else valid
    x = jnp.where(keep[..., None], x, jnp.zeros((), x.dtype))
    chex.assert_shape(x, (batch, n + (self.pool == "tok" and self.cls_in_tokens), self.width))
    if self.out_dim is not None:
      pooled = layers.tower_head(pooled, self.out_dim, head=self.head, use_bias=self.head_bias, what="ViT", **kw)
    chex.assert_shape(pooled, (batch, self.out_dim or self.width))
    return pooled, x

  def _learned_posemb(self, image: jax.Array, coords: jax.Array, valid: jax.Array) -> jax.Array:
    """ViT's "posemb/pos_embedding" [G*G, width], resampled to each image's grid."""
    grid = self.posemb_grid
    if grid is None and self.is_initializing():
      if is_packed(image, self.patch) or image.shape[1] != image.shape[2]:
        raise ValueError(f"NaFlex tower initialised from an input of shape {image.shape} (packed or not square) "
                         "needs model.image.naflex.posemb_grid (the side of its learned position grid, e.g. "
                         "image_size // patch)")
      grid = image.shape[1] // self.patch
    grid = grid or 1  # after init the stored table's shape is used, whatever this says
    init = partitioned(nn.initializers.normal(0.02), ("length", "embed"))
    table = PosembTable(grid * grid, self.width, self.param_dtype, init, name="posemb")()
    return resample_posemb(table, coords, valid)


class PosembTable(nn.Module):
  """The param LearnedPosEmb declares ("pos_embedding" [rows, width]); an existing one is read at its own
  shape (a checkpoint's grid), `rows` only sizes a new one."""
  rows: int
  width: int
  param_dtype: Any
  init: Any

  @nn.compact
  def __call__(self) -> jax.Array:
    if self.has_variable("params", "pos_embedding"):
      return nn.meta.unbox(self.get_variable("params", "pos_embedding"))
    return self.param("pos_embedding", self.init, (self.rows, self.width), self.param_dtype)


def check_naflex_arch(stem: str, posemb: str, pool: str, cls_posemb: bool, patch_dropout: float, patch: int) -> None:
  """What the NaFlex tower supports of ViT's settings; errors name the value and what is valid."""
  if stem != "patch":
    raise ValueError(f"NaFlex tower needs image.stem='patch' (its stem is a matmul over flattened patches), "
                     f"got {stem!r}")
  if patch < 2:
    raise ValueError(f"NaFlex tower needs a patch size >= 2, got {patch}")
  check_choice("ViT posemb", posemb, POSEMBS)
  check_choice("ViT pool", pool, POOLS)
  if cls_posemb:
    raise ValueError("NaFlex tower: image.cls_posemb=True (a [CLS] position row) is not supported; valid: False")
  if patch_dropout:
    raise ValueError(f"NaFlex tower: image.patch_dropout={patch_dropout} is not supported (padding already varies "
                     "per image); valid: 0")


def split_config(image_cfg: dict[str, Any] | None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
  """model.image -> (its ViT keys, its naflex settings or None). naflex=True or dict(posemb_grid=...)."""
  if not image_cfg or "naflex" not in image_cfg:
    return image_cfg, None
  image = dict(image_cfg)
  given = image.pop("naflex")
  if given is None or given is False:
    return image, None
  if given is True:
    given = {}
  if not isinstance(given, dict) and not hasattr(given, "items"):
    raise ValueError(f"model.image.naflex={given!r} is invalid; valid: True, or dict(posemb_grid=G)")
  given = dict(given)
  unknown = sorted(set(given) - set(NAFLEX_KEYS))
  if unknown:
    raise ValueError(f"model.image.naflex: unknown key(s) {unknown}; valid: {list(NAFLEX_KEYS)}")
  grid = given.get("posemb_grid")
  if grid is not None and (not isinstance(grid, int) or grid < 1):
    raise ValueError(f"model.image.naflex.posemb_grid={grid!r} is invalid; valid: an integer >= 1 (the learned "
                     "position grid's side), or None (the grid of the image the model is initialised with)")
  return image, dict(posemb_grid=grid)


def check_settings(image: dict[str, Any]) -> None:
  """A resolved image tower (vit_settings) that NaFlex will run."""
  check_naflex_arch(image["stem"], image["posemb"], image["pool"], image["cls_posemb"], image["patch_dropout"],
                    image["patch"])


def check_composable(c: dict[str, Any]) -> None:
  """A composable model whose image tower is NaFlex: only heads that read the pooled output, which
  alone is masked (a decoder, fusion head or MAP pooler would attend to the padded patches)."""
  check_settings(c["image"])
  readers = [name for name, on in (("model.decoder", c["decoder"]), ("model.fusion", c["fusion"]),
                                    ("model.contrastive.image_pool='map'",
                                     (c["contrastive"] or {}).get("image_pool") == "map")) if on]
  if readers:
    raise ValueError(f"model.image.naflex: {readers} read the image tokens, padded per image under NaFlex; valid: "
                     "a contrastive model with contrastive.image_pool='tower' (image.pool='map' pools with the mask)")


def make_tower(image: dict[str, Any], module_kw: dict[str, Any]) -> ViT:
  """The image tower of resolved settings: NaflexViT when they hold "naflex", else ViT."""
  image = dict(image)
  naflex = image.pop("naflex", None)
  if naflex is None:
    return ViT(**image, **module_kw)
  return NaflexViT(**image, **module_kw, posemb_grid=naflex["posemb_grid"])
