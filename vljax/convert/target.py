"""What a conversion is fitted to (Target) and the vljax model config it writes."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import numpy as np

from vljax.convert import towers
from vljax.convert.towers import Tensors, grid_of, resize_posemb, token_table
from vljax.data.images import NORMALIZATIONS as IMAGE_NORMALIZATIONS
from vljax.data.tokenizers import SPECIAL_TOKENS
from vljax.models.resolve import padded_vocab_size
from vljax.models.text import TEXT_VARIANTS
from vljax.models.vit import VIT_VARIANTS


@dataclasses.dataclass
class Target:
  """How the converted model should come out: sizes the checkpoint does not fix, and input conventions."""
  id_offset: int  # vljax token id - checkpoint token id
  vocab_size: int | None = None  # rows of the token table; None: what the checkpoint needs, padded to 128
  image_size: int | None = None  # None: the checkpoint's own
  max_len: int | None = None  # text positions kept; None: all of the checkpoint's
  activation: str | None = None  # overrides the checkpoint's (state dicts without a config)
  normalization: tuple = IMAGE_NORMALIZATIONS["siglip"]  # (mean, std) the vljax inputs are normalised with
  tokenizer: Any = None  # the vljax Tokenizer the ids come from, when one is given (its special tokens' ids)


def variant(sizes: dict, table: dict, fallback: str) -> str:
  """The name of the preset in `table` with these sizes, else `fallback` (the config overrides all sizes)."""
  keys = ("width", "depth", "mlp_dim", "num_heads")
  return next((name for name, s in table.items() if all(s[k] == sizes[k] for k in keys)), fallback)


def vit_config(width: int, depth: int, mlp_dim: int, num_heads: int, patch: int, **options) -> dict:
  """A ViT config naming every setting the weights depend on (options override the vljax defaults)."""
  sizes = dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads)
  explicit = dict(pool="gap", pre_norm=False, cls_posemb=False)
  return dict(variant=f"{variant(sizes, VIT_VARIANTS, 'B')}/{patch}", **sizes, patch=patch, stem="patch",
              posemb="learned", **dict(explicit, **options))


def text_config(width: int, depth: int, mlp_dim: int, num_heads: int, **options) -> dict:
  """A text tower config naming every setting the weights depend on."""
  sizes = dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads)
  explicit = dict(causal=False, pool="last", pad_id=0)
  return dict(variant=variant(sizes, TEXT_VARIANTS, "B"), **sizes, **dict(explicit, **options))


def image_positions(posemb: np.ndarray, patch: int, num_prefix: int, target: Target,
                    what: str) -> tuple[np.ndarray, int]:
  """(position table at the target image size, that image size) from the checkpoint's table."""
  grid = grid_of(posemb.shape[0] - num_prefix, what)
  size = target.image_size or grid * patch
  if size % patch:
    raise ValueError(f"image_size {size} is not divisible by the checkpoint's patch size {patch}")
  return resize_posemb(posemb, grid, size // patch, num_prefix), size


def text_tables(embedding: np.ndarray, posemb: np.ndarray, target: Target) -> tuple[np.ndarray, np.ndarray]:
  """(token table with vljax's ids, the first max_len position rows)."""
  rows = target.vocab_size or padded_vocab_size(target.id_offset + embedding.shape[0] + len(SPECIAL_TOKENS))
  max_len = target.max_len or posemb.shape[0]
  if max_len > posemb.shape[0]:
    raise ValueError(f"max_len {max_len} exceeds the checkpoint's {posemb.shape[0]} text positions")
  return token_table(embedding, target.id_offset, rows), posemb[:max_len]


def logit_config(log_scale: float, bias: float | None = None) -> dict:
  """The contrastive head's logit keys for a checkpoint's learned log scale (and bias): the clamp stays
  CLIP's 100 unless the checkpoint's scale is above it (SigLIP's is not clamped)."""
  scale = math.exp(log_scale)
  clamp = 100.0 if scale <= 100.0 * (1 + 1e-6) else float(math.ceil(scale))  # CLIP's trained t sits at log(100)
  return dict(logit_scale_init=scale, logit_bias_init=bias, max_logit_scale=clamp)


def contrastive_model(image_cfg: dict, text_cfg: dict, embed_dim: int, projections: dict, **head: Any) -> dict:
  """The composable model config of imported towers: `projections` (image/text -> (present, bias))
  and the logit keys (logit_config) make its contrastive head."""
  contrastive = dict(embed_dim=embed_dim, **head)
  for tower, (present, bias) in projections.items():
    contrastive[f"{tower}_proj"] = present
    if present:
      contrastive[f"{tower}_proj_bias"] = bias
  return dict(name="composable", image=image_cfg, text=text_cfg, contrastive=contrastive)


class VisionTrunk(NamedTuple):
  """What Hugging Face CLIP and SigLIP image towers share, in vljax layout."""
  patch_weight: np.ndarray  # the patch conv as published; callers add their bias and normalisation
  patch: int
  posemb: np.ndarray        # resized to the target image size
  image_size: int
  encoder: dict             # blocks + final LayerNorm
  depth: int


def hf_vision_trunk(t: Tensors, spec: dict, target: Target, cls_rows: int, what: str) -> VisionTrunk:
  """Patch conv, position rows (`cls_rows` of them before the grid) and encoder of an HF image tower."""
  patch_weight = t.take("vision_model.embeddings.patch_embedding.weight")
  patch = patch_weight.shape[-1]
  posemb, image_size = image_positions(t.take("vision_model.embeddings.position_embedding.weight"),
                                       patch, cls_rows, target, what)
  encoder, depth = towers.encoder(t, "vision_model.encoder", spec["vision"]["num_heads"],
                                  "vision_model.post_layernorm")
  return VisionTrunk(patch_weight, patch, posemb, image_size, encoder, depth)


def activations(spec: dict, target: Target) -> tuple[str, str]:
  """(image, text) activations: the target's override, else each tower's own."""
  return tuple(towers.check_activation(target.activation or spec[k]["activation"]) for k in ("vision", "text"))
