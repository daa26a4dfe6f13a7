"""Attention maps: which image regions a caption token or the pooled image embedding attends to.

  maps = vljax.load("runs/coca").attention_maps(images)            # caption-token maps, greedy caption
  overlay(maps["images"][0], maps["maps"][0][2])                      # the 3rd token's map on the image

The maps come from attention probabilities that MultiHeadAttention records when an apply call makes
the layers.ATTENTION_MAPS collection mutable (the model's outputs stay bit-identical). They read the
composable model (vljax/models/composable.py: two-tower CLIP/SigLIP/LiT, Cap/CapPa, CoCa, BLIP):

  caption   the decoder's cross-attention from each caption position to the image memory, averaged
            over heads, per decoder layer. When the memory is the memory pooler's queries (CoCa's
            memory_queries), each query's own attention over the image tokens carries it on to them.
  pooled    the contrastive image embedding's map:
              contrastive.image_pool="map"  the probe's attention (through the memory pooler when it
                                            reads the memory queries, CoCa's cascade);
              image.pool="map"              the ViT's attention probe;
              image.pool="tok" or "gap"     attention rollout over the ViT's self-attention layers (Abnar
                                            & Zuidema 2020): per layer the head mean plus the identity (the
                                            residual), rows renormalised, multiplied through the layers;
                                            the pooled row is the [CLS] row ("tok") or the rows' mean ("gap").
            image.pool="max" (a per-feature max) has no attention to read.

Every map ends on the image tower's patch tokens: a [CLS] among them is dropped, the rest renormalised
to sum to 1 and laid out as the patch grid [h, w] = [H / patch, W / patch] (row-major, as the ViT
flattens it). overlay() and overlay_sheet() draw them with numpy, PIL and matplotlib's colormaps.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from PIL import Image, ImageDraw

from vljax.models.composable import Composable
from vljax.models.layers import ATTENTION_MAPS

KINDS = ("auto", "caption", "pooled")
SUPPORTED = ("the composable model: two-tower (CLIP, SigLIP, LiT) for kind='pooled', captioners (Cap, CapPa) "
             "for kind='caption', CoCa and BLIP for both")
ROLLOUT_POOLS = ("tok", "gap")  # image.pool values whose pooled map is an attention rollout


# ---- which maps a model has


def resolve_kind(model: nn.Module, kind: str) -> str:
  """"caption" or "pooled" for `model`; "auto" is caption for a model with a decoder, else pooled.
  A clear error when the model has no attention to read for `kind`."""
  if kind not in KINDS:
    raise ValueError(f"Unknown attention map kind {kind!r}; valid: {list(KINDS)}")
  name = type(model).__name__
  if not isinstance(model, Composable):
    why = (f"{name} splices the image tokens into its language model's sequence: no cross-attention to the image "
           "and no pooled image embedding" if getattr(model, "splices_image_tokens", False)
           else f"{name} is not one")
    raise ValueError(f"attention maps read {SUPPORTED}; {why}")
  if kind == "auto":
    kind = "caption" if model.text else "pooled"
  if kind == "caption" and not model.text:
    raise ValueError(f"kind='caption' reads a caption decoder's cross-attention; this {name} has none "
                     "(model.decoder): use kind='pooled'")
  if kind == "pooled":
    pooled_method(model)  # raises for a model without a pooled map
  return kind


def pooled_method(model: Composable) -> str:
  """How the pooled embedding's map is read: "probe" or "rollout" (see the module docstring)."""
  c = model.contrastive
  if not c:
    raise ValueError("kind='pooled' maps the contrastive image embedding; this model has none (model.contrastive): "
                     "use kind='caption'")
  if c["image_pool"] == "map" or model.img.pool == "map":
    return "probe"
  if model.img.pool not in ROLLOUT_POOLS:
    raise ValueError(f"kind='pooled' has no attention map for image.pool={model.img.pool!r} (a per-feature max "
                     "over tokens); valid: image.pool 'map' (the probe's attention), 'tok' or 'gap' (attention "
                     "rollout), or contrastive.image_pool='map'")
  if model.img.depth < 1:
    raise ValueError(f"kind='pooled' with image.pool={model.img.pool!r} rolls attention out over the ViT's "
                     "self-attention layers; this tower has none (depth 0)")
  return "rollout"


def patch_grid(model: Composable, image_shape: Sequence[int]) -> tuple[int, int]:
  """(h, w) patch grid of images [B, H, W, 3]: the ViT's stem has stride `patch` (patchify or conv)."""
  height, width = image_shape[1], image_shape[2]
  patch = model.img.patch
  if height % patch or width % patch:
    raise ValueError(f"image size {height}x{width} is not divisible by the image tower's patch {patch}")
  return height // patch, width // patch


# ---- recording


def record(model: Composable, params: Any, images: jax.Array, ids: jax.Array | None = None) -> dict:
  """The attention probabilities of encode_image(images) [and caption_logits(memory, ids)]: the
  ATTENTION_MAPS tree, each leaf ("probs",) a tuple of one float32 [B, heads, T, S] ([layers, ...]
  under a scanned Transformer)."""
  def run(module, images, ids):
    out = module.encode_image(images)
    if ids is not None:
      module.caption_logits(out["memory"], ids)

  _, state = model.apply({"params": params}, images, ids, method=run, mutable=[ATTENTION_MAPS])
  return state[ATTENTION_MAPS]


def _probs(tree: dict, *path: str) -> jax.Array:
  """float32 [B, heads, T, S] recorded by the attention at `path`."""
  for key in path:
    tree = tree[key]
  return tree["probs"][0]


def layer_probs(transformer: dict, name: str) -> jax.Array:
  """[layers, B, heads, T, S]: the attention `name` ("attn", "cross_attn") of every block of a recorded
  layers.Transformer, in depth order (scanned or looped)."""
  if "layers" in transformer:  # nn.scan stacks its blocks' recordings on axis 0
    return _probs(transformer, "layers", name)
  blocks = sorted((k for k in transformer if k.startswith("block_")), key=lambda k: int(k.split("_")[1]))
  return jnp.stack([_probs(transformer, block, name) for block in blocks])


# ---- from attention to patch maps


def attention_rollout(probs: jax.Array) -> jax.Array:
  """probs [layers, B, heads, T, T] (first layer first) -> rollout [B, T, T], rows summing to 1.

  Each layer's head mean plus the identity (the residual branch), rows renormalised; the product
  A_L ... A_1 says how much of each input token every output token holds."""
  mixed = jnp.mean(probs, axis=2) + jnp.eye(probs.shape[-1], dtype=probs.dtype)
  mixed = mixed / jnp.sum(mixed, axis=-1, keepdims=True)
  out = mixed[0]
  for layer in mixed[1:]:
    out = layer @ out
  return out


def to_grid(weights: jax.Array, grid: tuple[int, int], prefix: int) -> jax.Array:
  """weights [..., prefix + h*w] over the image tower's tokens -> [..., h, w] over its patches: the
  `prefix` non-patch tokens ([CLS]) dropped, the rest renormalised to sum to 1."""
  h, w = grid
  if weights.shape[-1] != prefix + h * w:
    raise ValueError(f"attention over {weights.shape[-1]} tokens does not fit {prefix} non-patch token(s) + a "
                     f"{h}x{w} patch grid")
  patches = weights[..., prefix:]
  total = jnp.sum(patches, axis=-1, keepdims=True)
  patches = patches / jnp.maximum(total, jnp.finfo(patches.dtype).tiny)
  return patches.reshape(*weights.shape[:-1], h, w)


def _through_memory_pool(model: Composable, tree: dict, over_memory: jax.Array) -> jax.Array:
  """Weights [B, ..., S] over the decoder's memory -> over the ViT's tokens: unchanged when the memory is
  the tokens, else carried through the memory pooler's head-mean attention [B, Q, N]."""
  if not model.text or not model.text["memory_queries"]:
    return over_memory
  pool = jnp.mean(_probs(tree, "memory_pool", "attn"), axis=1)
  return jnp.einsum("b...q,bqn->b...n", over_memory, pool)


def caption_maps(model: Composable, params: Any, images: jax.Array, ids: jax.Array) -> jax.Array:
  """float32 [B, layers, L, h, w]: per decoder layer, the head-mean cross-attention of each decoder
  position t (the one reading ids[:, t], whose output predicts ids[:, t+1]) over the image patches.
  images [B, H, W, 3] preprocessed, ids [B, L] (BOS first). Traceable: jit it with the model bound."""
  resolve_kind(model, "caption")
  tree = record(model, params, images, ids)
  cross = jnp.mean(layer_probs(tree["dec"]["decoder"], "cross_attn"), axis=2)  # [layers, B, L, S]
  tokens = _through_memory_pool(model, tree, jnp.swapaxes(cross, 0, 1))
  return to_grid(tokens, patch_grid(model, images.shape), int(model.img.cls_in_tokens))


def pooled_map(model: Composable, params: Any, images: jax.Array) -> jax.Array:
  """float32 [B, h, w]: the contrastive image embedding's map over the patches (probe weights or
  attention rollout: pooled_method). Traceable: jit it with the model bound."""
  method = pooled_method(model)
  tree = record(model, params, images)
  grid, c = patch_grid(model, images.shape), model.contrastive
  if method == "rollout":  # the encoder's tokens: [CLS] first when the tower pools it
    rollout = attention_rollout(layer_probs(tree["img"]["encoder"], "attn"))
    row = rollout[:, 0] if model.img.pool == "tok" else jnp.mean(rollout, axis=1)
    return to_grid(row, grid, int(model.img.pool == "tok"))
  if c["image_pool"] == "map":
    probe = jnp.mean(_probs(tree, "img_pool", "attn"), axis=1)[:, 0]  # [B, S]
    if c["image_pool_input"] == "memory":
      probe = _through_memory_pool(model, tree, probe)
  else:  # the ViT's own probe reads its output tokens, which hold no [CLS] with pool="map"
    probe = jnp.mean(_probs(tree, "img", "map", "attn"), axis=1)[:, 0]
  return to_grid(probe, grid, int(model.img.cls_in_tokens))


def check_layer(layer: int | str, depth: int) -> None:
  """layer must be "mean" or an index into `depth` layers (negative from the last)."""
  if isinstance(layer, str) and layer == "mean":
    return
  if isinstance(layer, (bool, np.bool_)) or not isinstance(layer, (int, np.integer)) or not -depth <= layer < depth:
    raise ValueError(f"layer={layer!r} is invalid; valid: 'mean' or a decoder layer index in {-depth}..{depth - 1}")


def select_layer(maps: np.ndarray, layer: int | str, axis: int = 1) -> np.ndarray:
  """One layer of maps stacked on `axis` (an index, negative from the last), or "mean" of all."""
  check_layer(layer, maps.shape[axis])
  return np.mean(maps, axis=axis) if isinstance(layer, str) else np.take(maps, int(layer), axis=axis)


def in_chunks(fn, *arrays: np.ndarray, chunk: int) -> np.ndarray:
  """fn over aligned arrays `chunk` rows at a time (bounding the recorded probabilities' memory),
  results on the host, concatenated."""
  return np.concatenate([np.asarray(fn(*(a[start:start + chunk] for a in arrays)))
                         for start in range(0, len(arrays[0]), chunk)])


def caption_ids(tokenizer, captions: Sequence[str], max_len: int) -> tuple[np.ndarray, list[list[int]]]:
  """(ids [N, max_len] = BOS + each caption's content ids, padded; the content ids of each): the
  decoder's input as greedy decoding feeds it, so position j's map is the one that produced token j+1."""
  if not isinstance(captions, (list, tuple)) or not captions or not all(isinstance(c, str) for c in captions):
    raise ValueError(f"captions must be a non-empty list of strings, one per image, got {captions!r}")
  contents = [tokenizer.content_ids(c)[:max_len - 1] for c in captions]
  ids = np.full((len(captions), max_len), tokenizer.pad_id, np.int32)
  ids[:, 0] = tokenizer.bos_id
  for row, content in enumerate(contents):
    ids[row, 1:1 + len(content)] = content
  return ids, contents


# ---- drawing


def overlay(image: np.ndarray, grid_map: np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
  """uint8 [H, W, 3]: grid_map [h, w] upsampled bilinearly to the image, scaled to [0, 1] (its min to
  its max), coloured by the matplotlib colormap and blended over image (uint8 [H, W, 3]) at alpha."""
  image, grid_map = np.asarray(image), np.asarray(grid_map, np.float32)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"overlay takes an image uint8 [H, W, 3], got dtype {image.dtype} shape {image.shape}")
  if grid_map.ndim != 2 or not np.all(np.isfinite(grid_map)):
    raise ValueError(f"overlay takes a finite map [h, w], got shape {grid_map.shape}")
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha={alpha} is invalid; valid: 0..1 (the colour's weight)")
  import matplotlib  # imported here: only drawing needs it
  if colormap not in matplotlib.colormaps:
    raise ValueError(f"Unknown colormap {colormap!r}; valid: a matplotlib colormap name ('jet', 'inferno', ...)")
  height, width = image.shape[:2]
  up = np.asarray(Image.fromarray(grid_map).resize((width, height), Image.BILINEAR))
  low, high = float(up.min()), float(up.max())
  scaled = (up - low) / (high - low) if high > low else np.zeros_like(up)
  color = matplotlib.colormaps[colormap](scaled)[..., :3] * 255.0
  return np.clip((1.0 - alpha) * image + alpha * color + 0.5, 0, 255).astype(np.uint8)


CELL = 160  # pixels, each panel's side in a sheet
TITLE = 16  # pixels above each panel
MARGIN = 4


def overlay_sheet(panels: Sequence[tuple[np.ndarray, str]], path: str | None = None, columns: int = 4,
                  cell: int = CELL) -> np.ndarray:
  """uint8 [height, width, 3]: panels (uint8 image [H, W, 3], title) in a grid, each resized to
  cell x cell under its title; written as a PNG to `path` when given."""
  if not panels:
    raise ValueError("overlay_sheet needs at least one (image, title) panel")
  if columns < 1 or cell < 1:
    raise ValueError(f"columns={columns} and cell={cell} must be >= 1")
  cols = min(columns, len(panels))
  rows = -(-len(panels) // cols)
  sheet = Image.new("RGB", (cols * (cell + MARGIN) + MARGIN, rows * (cell + TITLE + MARGIN) + MARGIN), "white")
  draw = ImageDraw.Draw(sheet)
  for i, (image, title) in enumerate(panels):
    x = MARGIN + (i % cols) * (cell + MARGIN)
    y = MARGIN + (i // cols) * (cell + TITLE + MARGIN)
    draw.text((x + 2, y + 2), str(title), fill=(0, 0, 0))
    sheet.paste(Image.fromarray(np.asarray(image, np.uint8)).resize((cell, cell), Image.BILINEAR), (x, y + TITLE))
  if path is not None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sheet.save(path, format="PNG")
  return np.asarray(sheet)
