"""Vision Transformer: stem (patchify or early convs) -> +posemb -> encoder -> pool [-> head]."""

from __future__ import annotations

import math
import re
from typing import Any

import chex
import jax
import jax.numpy as jnp
from flax import linen as nn

from vljax.models import layers
from vljax.models.layers import ACTIVATIONS, DEFAULT_ACTIVATION, DEFAULT_NORM_EPS, Dtype, check_choice, partitioned
from vljax.models.pooling import MAPHead

# name -> size; the variant string "NAME/PATCH" adds the patch size ("B/16").
VIT_VARIANTS: dict[str, dict[str, int]] = {
    "mu": dict(width=32, depth=2, mlp_dim=64, num_heads=2),  # tests only
    "Ti": dict(width=192, depth=12, mlp_dim=768, num_heads=3),
    "S": dict(width=384, depth=12, mlp_dim=1536, num_heads=6),
    "B": dict(width=768, depth=12, mlp_dim=3072, num_heads=12),
    "L": dict(width=1024, depth=24, mlp_dim=4096, num_heads=16),
    "So400m": dict(width=1152, depth=27, mlp_dim=4304, num_heads=16),
    "g": dict(width=1408, depth=40, mlp_dim=6144, num_heads=16),
}
# CPU-demo family "shapes/STEM-WIDTH" (e.g. "shapes/conv-64"): 64x64 images -> 8x8 tokens.
SHAPES_FAMILY = re.compile(r"shapes/(conv|patch)-(\d+)")
SHAPES_DEPTH, SHAPES_PATCH = 4, 8

STEMS = ("patch", "conv")
POSEMBS = ("learned", "sincos2d")
POOLS = ("tok", "gap", "max", "map")
ARCH_KEYS = ("width", "depth", "mlp_dim", "num_heads", "patch", "stem", "stem_channels", "posemb", "pool",
             "pre_norm", "cls_posemb", "cls_in_tokens", "head", "head_bias", "activation", "norm_eps",
             "patch_dropout", "mask_token")
PATCH_DROPOUT_STREAM = "patch_dropout"  # the named random stream of the kept patches (a model's rng_streams)
# Defaults of the keys every variant shares; the last seven express CLIP's, SigLIP's and BLIP's published towers.
SHARED_DEFAULTS = dict(stem_channels=(32, 64), posemb="learned", pool="gap",
                       pre_norm=False,  # LayerNorm before the encoder (CLIP's ln_pre)
                       cls_posemb=False,  # the [CLS] token gets a position embedding row (CLIP), not none
                       cls_in_tokens=False,  # the output tokens (a decoder's memory) keep [CLS] first (BLIP)
                       head=True,  # linear head to the two-tower embedding; False: width is the embedding
                       head_bias=True, activation=DEFAULT_ACTIVATION, norm_eps=DEFAULT_NORM_EPS,
                       patch_dropout=0.0,  # FLIP: the fraction of patches a training pass drops, per image
                       mask_token=False)  # a learned [MASK] patch embedding (masked prediction); off: no param


def vit_settings(variant: str, **overrides: Any) -> dict[str, Any]:
  """Variant string + overrides -> every architecture hyperparameter of a ViT."""
  if m := SHAPES_FAMILY.fullmatch(variant):
    stem, width = m.group(1), int(m.group(2))
    cfg = dict(width=width, depth=SHAPES_DEPTH, mlp_dim=4 * width, num_heads=max(1, width // 32),
               patch=SHAPES_PATCH, stem=stem)
  else:
    name, _, patch = str(variant).partition("/")
    if name not in VIT_VARIANTS or not patch.isdigit():
      raise ValueError(f"Unknown ViT variant {variant!r}; valid: NAME/PATCH with NAME in "
                       f"{list(VIT_VARIANTS)} (e.g. 'B/16'), or 'shapes/conv-WIDTH', 'shapes/patch-WIDTH'")
    cfg = dict(VIT_VARIANTS[name], patch=int(patch), stem="patch")
  cfg.update(SHARED_DEFAULTS)
  for key, value in overrides.items():
    check_choice("ViT key", key, ARCH_KEYS)
    if value is not None:
      cfg[key] = tuple(value) if key == "stem_channels" else value
  check_choice("ViT stem", cfg["stem"], STEMS)
  check_choice("ViT posemb", cfg["posemb"], POSEMBS)
  check_choice("ViT pool", cfg["pool"], POOLS)
  check_choice("ViT activation", cfg["activation"], ACTIVATIONS)
  if cfg["cls_posemb"] and (cfg["pool"], cfg["posemb"]) != ("tok", "learned"):
    raise ValueError(f"ViT cls_posemb=True gives the [CLS] token a learned position row: it needs pool='tok' "
                     f"and posemb='learned', got pool={cfg['pool']!r}, posemb={cfg['posemb']!r}")
  _check_cls_in_tokens(cfg["cls_in_tokens"], cfg["pool"])
  if not (isinstance(cfg["patch_dropout"], (int, float)) and 0 <= cfg["patch_dropout"] < 1):
    raise ValueError(f"ViT patch_dropout={cfg['patch_dropout']!r} is invalid; valid: a fraction in [0, 1) of the "
                     "patches a training pass drops (FLIP: 0.5 or 0.75; 0: none)")
  if not isinstance(cfg["mask_token"], bool):
    raise ValueError(f"ViT mask_token={cfg['mask_token']!r} is invalid; valid: True (a learned [MASK] patch "
                     "embedding, for objectives.masked_prediction) or False")
  if cfg["stem"] == "conv":
    conv_stem_last_kernel(cfg["patch"], cfg["stem_channels"])
  return cfg


def kept_patches(num_patches: int, patch_dropout: float) -> int:
  """Patches a training pass keeps of an image's `num_patches` at this dropout (at least one)."""
  return max(1, int(round(num_patches * (1.0 - patch_dropout))))


def _check_cls_in_tokens(cls_in_tokens: bool, pool: str) -> None:
  if cls_in_tokens and pool != "tok":
    raise ValueError(f"ViT cls_in_tokens=True keeps the [CLS] token in the output tokens: it needs pool='tok', "
                     f"got pool={pool!r}")


def conv_stem_last_kernel(patch: int, channels: tuple[int, ...]) -> int:
  """Kernel (= stride) of the conv stem's last conv, after len(channels) stride-2 convs."""
  down = 2 ** len(channels)
  if patch % down:
    raise ValueError(f"conv stem: patch {patch} is not divisible by 2**len(stem_channels)={down} "
                     f"(stem_channels={channels}); use a patch that is, or fewer stem channels")
  return patch // down


def conv_as_matmul(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
  """NHWC x HWIO conv as im2col (kh*kw strided slices) + one matmul.

  Same result as lax.conv; XLA:CPU's native conv gradients are several times slower than
  this, and the stem is the one conv in the model, so the CPU demo's step time hinges on it.
  """
  kh, kw, cin, cout = kernel.shape
  x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  oh, ow = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
  cols = [x[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
          for i in range(kh) for j in range(kw)]  # (i, j, c) order = HWIO kernel order
  return jnp.concatenate(cols, axis=-1) @ kernel.reshape(kh * kw * cin, cout)


class StemConv(nn.Module):
  """A conv layer computed by conv_as_matmul; params laid out like nn.Conv's (kernel HWIO, bias)."""
  features: int
  kernel_size: int
  stride: int
  padding: int = 0
  out_name: str | None = None  # logical name of the output channels
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    init = partitioned(nn.initializers.lecun_normal(), (None, None, None, self.out_name))
    kernel = self.param("kernel", init, (k, k, x.shape[-1], self.features), self.param_dtype)
    y = conv_as_matmul(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.padding)
    if self.use_bias:
      bias = self.param("bias", partitioned(nn.initializers.zeros, (self.out_name,)), (self.features,),
                        self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class ConvStem(nn.Module):
  """Early convolutions (Xiao et al. 2021): per stem channel count a 3x3 stride-2 conv + ReLU,
  then one conv (kernel = stride) bringing the total stride to `patch` and the channels to `width`.

  No per-pixel norm: LayerNorm over each pixel's channels scales flat background noise up to the
  contrast of object edges, and on the shapes world it stopped the tower from learning shape.
  """
  width: int
  patch: int
  channels: tuple[int, ...] = (32, 64)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = conv_stem_last_kernel(self.patch, self.channels)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for i, c in enumerate(self.channels):
      x = nn.relu(StemConv(c, 3, stride=2, padding=1, name=f"conv_{i}", **kw)(x))
    return StemConv(self.width, k, stride=k, out_name="embed", name="embedding", **kw)(x)


def max_over_tokens(x: jax.Array) -> jax.Array:
  """[B, N, D] -> [B, D], the largest token value of each feature. Its gradient reaches the maximising
  token by index. jnp.max's finds the maximisers by comparing its input with the max again and divides
  by their count: 0, so a NaN gradient, wherever XLA computes the two in code that rounds differently
  (a producer fused twice; seen with XLA's optimisations off). The same gradient where there is one
  maximum; among ties the first takes it all."""
  first = jnp.argmax(x, axis=1)
  return jnp.take_along_axis(x, first[:, None, :], axis=1)[:, 0]


class ViT(nn.Module):
  """Image [B, H, W, 3] -> (pooled [B, out_dim or width], tokens [B, N (+ 1 with cls_in_tokens), width])."""
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  patch: int = 16
  stem: str = "patch"
  stem_channels: tuple[int, ...] = (32, 64)
  posemb: str = "learned"
  pool: str = "gap"
  pre_norm: bool = False
  cls_posemb: bool = False
  cls_in_tokens: bool = False  # tokens [B, 1 + N, width] with [CLS] first (BLIP's image embeddings), not [B, N]
  head: bool = True
  head_bias: bool = True
  activation: str = DEFAULT_ACTIVATION
  norm_eps: float = DEFAULT_NORM_EPS
  out_dim: int | None = None  # linear head after pooling (two-tower projection), when `head`
  scan: bool = False
  remat: str = "none"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str | None = None
  patch_dropout: float = 0.0
  mask_token: bool = False  # param "mask_token" exists only when True: other param trees stay as they were

  @nn.compact
  def __call__(self, image: jax.Array, train: bool = False, mask: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array]:
    """mask [B, N] bool (N = h * w patches, row-major): those patches' embeddings become the learned
    mask token before the position embedding (needs mask_token=True); a masked pass keeps every patch
    (no patch dropout), so each output token lines up with its input position."""
    chex.assert_rank(image, 4)
    batch, height, width_px, _ = image.shape
    if height % self.patch or width_px % self.patch:
      raise ValueError(f"image size {height}x{width_px} is not divisible by patch {self.patch}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = image.astype(self.dtype)

    # 1. Stem: pixels -> [B, h, w, width] grid of tokens.
    check_choice("ViT stem", self.stem, STEMS)
    if self.stem == "conv":
      x = ConvStem(self.width, self.patch, self.stem_channels, name="stem", **kw)(x)
    else:
      x = nn.Conv(self.width, (self.patch, self.patch), strides=self.patch, padding="VALID", name="embedding",
                  kernel_init=partitioned(nn.initializers.lecun_normal(), (None, None, None, "embed")),
                  bias_init=partitioned(nn.initializers.zeros, ("embed",)), **kw)(x)
    _, h, w, c = x.shape
    x = jnp.reshape(x, (batch, h * w, c))
    x = self._mask_patches(x, mask)

    # 2. Optional [CLS] token, then the position embedding: big_vision gives [CLS] none (it joins
    # after), CLIP (cls_posemb) a row of its own.
    check_choice("ViT pool", self.pool, POOLS)
    check_choice("ViT posemb", self.posemb, POSEMBS)
    if self.cls_posemb and (self.pool, self.posemb) != ("tok", "learned"):
      raise ValueError(f"ViT cls_posemb=True needs pool='tok' and posemb='learned', got pool={self.pool!r}, "
                       f"posemb={self.posemb!r}")

    def with_cls(x):
      cls = self.param("cls", partitioned(nn.initializers.zeros, ("embed",)), (c,), self.param_dtype)
      return jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (batch, 1, c)), x], axis=1)

    if self.cls_posemb:
      x = with_cls(x)
    if self.posemb == "learned":
      x = self._add_learned_posemb(x, h, w)
    else:
      x = x + layers.posemb_sincos_2d(h, w, c).astype(x.dtype)[None]
    if self.pool == "tok" and not self.cls_posemb:
      x = with_cls(x)
    patches = h * w
    if train and self.patch_dropout > 0 and mask is None:  # FLIP: each image keeps a random subset of its patches
      x = self._drop_patches(x, has_cls=self.pool == "tok")
      patches = kept_patches(h * w, self.patch_dropout)

    # 3. Encoder, after CLIP's extra LayerNorm when pre_norm.
    block_kw = dict(activation=self.activation, norm_eps=self.norm_eps)
    if self.pre_norm:
      x = layers.layer_norm(name="pre_norm", epsilon=self.norm_eps, **kw)(x)
    x = layers.Transformer(self.depth, self.mlp_dim, self.num_heads, scan=self.scan, remat=self.remat,
                           attention_impl=self.attention_impl, name="encoder", **block_kw, **kw)(x)

    # 4. Pool.
    _check_cls_in_tokens(self.cls_in_tokens, self.pool)
    if self.pool == "tok":
      pooled, x = x[:, 0], (x if self.cls_in_tokens else x[:, 1:])
    elif self.pool == "gap":
      pooled = jnp.mean(x, axis=1)
    elif self.pool == "max":  # small objects on a large background: max keeps them, a mean dilutes them
      pooled = max_over_tokens(x)
    else:
      pooled = MAPHead(self.num_heads, self.mlp_dim, attention_impl=self.attention_impl, name="map", **block_kw,
                       **kw)(x)[:, 0]
    chex.assert_shape(x, (batch, patches + self.cls_in_tokens, self.width))

    # 5. Optional linear head.
    if self.out_dim is not None:
      pooled = layers.tower_head(pooled, self.out_dim, head=self.head, use_bias=self.head_bias, what="ViT", **kw)
    chex.assert_shape(pooled, (batch, self.out_dim or self.width))
    return pooled, x

  def _mask_patches(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """x [B, N, D] with the masked patches replaced by the mask token; the param is made whenever
    mask_token is on, so init creates it without a mask."""
    if not self.mask_token:
      if mask is not None:
        raise ValueError("ViT got a patch mask but has no mask token: set model.image.mask_token=True "
                         "(objectives.masked_prediction)")
      return x
    token = self.param("mask_token", partitioned(nn.initializers.normal(0.02), ("embed",)), (x.shape[-1],),
                       self.param_dtype)
    if mask is None:
      return x
    chex.assert_shape(mask, x.shape[:2])
    return jnp.where(mask[..., None], token.astype(x.dtype), x)

  def _add_learned_posemb(self, x: jax.Array, h: int, w: int) -> jax.Array:
    """x + the learned position embedding. An image smaller than the one the table was made for (a
    local crop) gets the table's patch grid resized to its own, bilinearly (FlexiViT, DINO)."""
    made = self.variables.get("params", {}).get("posemb", {}).get("pos_embedding")
    rows = None if made is None else getattr(made, "value", made).shape[0]
    if rows is None or rows == x.shape[1]:
      return layers.LearnedPosEmb(x.shape[1], self.param_dtype, name="posemb")(x)
    cls = int(self.cls_posemb)
    side = math.isqrt(rows - cls)
    if side * side != rows - cls:
      raise ValueError(f"ViT: the learned position embedding has {rows - cls} patch rows, not a square grid: it "
                       f"cannot be resized to {h}x{w} patches; feed images of the size it was made for")
    table = layers.LearnedPosEmb(rows, self.param_dtype, name="posemb")(jnp.zeros((1, rows, x.shape[-1]), x.dtype))[0]
    grid = jax.image.resize(table[cls:].reshape(side, side, -1), (h, w, table.shape[-1]), "bilinear")
    return x + jnp.concatenate([table[:cls], grid.reshape(h * w, -1)])[None]

  def _drop_patches(self, x: jax.Array, has_cls: bool) -> jax.Array:
    """x [B, ([CLS] +) N, D] -> [B, ([CLS] +) kept, D]: a uniformly random subset of each image's patches,
    in their order, with their position embeddings; [CLS] always stays."""
    if not self.has_rng(PATCH_DROPOUT_STREAM):
      raise ValueError(f"ViT patch_dropout={self.patch_dropout} draws from the random stream "
                       f"{PATCH_DROPOUT_STREAM!r}, which this model does not declare; valid: image.patch_dropout=0, "
                       "or the composable model")
    cls, patches = (x[:, :1], x[:, 1:]) if has_cls else (x[:, :0], x)
    keep = kept_patches(patches.shape[1], self.patch_dropout)
    scores = jax.random.uniform(self.make_rng(PATCH_DROPOUT_STREAM), patches.shape[:2])
    kept = jnp.sort(jax.lax.top_k(scores, keep)[1], axis=1)
    return jnp.concatenate([cls, jnp.take_along_axis(patches, kept[..., None], axis=1)], axis=1)


def make_vit(variant: str, **kwargs: Any) -> ViT:
  """ViT from a variant string; architecture overrides and module options as keywords."""
  arch = {k: kwargs.pop(k) for k in list(kwargs) if k in ARCH_KEYS}
  return ViT(**vit_settings(variant, **arch), **kwargs)
