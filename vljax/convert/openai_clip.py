"""OpenAI / open_clip CLIP state dicts (.pt TorchScript or state dict, .safetensors) -> vljax composable.

The names are mapped onto Hugging Face CLIP's (what transformers' convert_clip_original_pytorch_to_hf
does) and converted by `hf_clip`. A state dict says nothing of heads, activation or LayerNorm epsilon:
heads are width / 64 (OpenAI's rule, and open_clip's but for the wide image towers in
WIDE_VISION_HEADS), the activation is QuickGELU (OpenAI's weights; open_clip models without
"-quickgelu" in their name use "gelu"), the epsilon torch's 1e-5.
"""

from __future__ import annotations

import re

import numpy as np

from vljax.convert import files, hf_clip
from vljax.convert.towers import Tensors

HEAD_DIM = 64
# open_clip's ViT-H/14, g/14 and bigG/14 image towers: 16 heads of 80, 88 and 104 dims.
WIDE_VISION_HEADS = {1280: 16, 1408: 16, 1664: 16}
# OpenAI name pattern -> Hugging Face name; "{i}" keeps the layer number.
RENAMES = [
    (r"visual\.conv1\.weight", "vision_model.embeddings.patch_embedding.weight"),
    (r"visual\.class_embedding", "vision_model.embeddings.class_embedding"),
    (r"visual\.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
    (r"visual\.ln_pre\.(weight|bias)", r"vision_model.pre_layrnorm.\1"),
    (r"visual\.ln_post\.(weight|bias)", r"vision_model.post_layernorm.\1"),
    (r"visual\.transformer\.resblocks\.(\d+)\.(.*)", r"vision_model.encoder.layers.\1.\2"),
    (r"token_embedding\.weight", "text_model.embeddings.token_embedding.weight"),
    (r"positional_embedding", "text_model.embeddings.position_embedding.weight"),
    (r"ln_final\.(weight|bias)", r"text_model.final_layer_norm.\1"),
    (r"transformer\.resblocks\.(\d+)\.(.*)", r"text_model.encoder.layers.\1.\2"),
    (r"logit_scale", "logit_scale"),
]
BLOCK_RENAMES = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
                 "attn.out_proj": "self_attn.out_proj"}
# Buffers of OpenAI's TorchScript archives and open_clip's text attention mask: not weights.
IGNORED = {"input_resolution", "context_length", "vocab_size", "attn_mask"}


def read(path: str) -> tuple[Tensors, dict]:
  """(tensors in Hugging Face CLIP names, spec) of an OpenAI / open_clip state dict."""
  arrays = files.read_tensors(path)
  if any(name.startswith("visual.layer1.") for name in arrays):
    raise ValueError(f"{path!r} is a ResNet CLIP (visual.layer1...); only ViT image towers are supported")
  if any(name.startswith("vision_model.") for name in arrays):
    raise FileNotFoundError(f"{path!r} has Hugging Face tensor names but no config.json beside it; put the "
                            "model's config.json next to it (formats hf_clip / hf_siglip)")
  if "visual.conv1.weight" not in arrays:
    raise ValueError(f"{path!r} has no visual.conv1.weight: not an OpenAI / open_clip ViT CLIP state dict "
                     f"(first tensors: {sorted(arrays)[:6]})")
  renamed = {}
  for name, array in arrays.items():
    if name in IGNORED:
      continue
    renamed.update(_rename(name, array))
  renamed["visual_projection.weight"] = renamed.pop("visual.proj").T  # OpenAI: x @ proj
  renamed["text_projection.weight"] = renamed.pop("text_projection").T
  spec_for = lambda heads: dict(num_heads=heads, activation="quick_gelu", norm_eps=1e-5)
  image_width, text_width = arrays["visual.class_embedding"].shape[0], arrays["token_embedding.weight"].shape[1]
  spec = dict(vision=spec_for(WIDE_VISION_HEADS.get(image_width, image_width // HEAD_DIM)),
              text=spec_for(text_width // HEAD_DIM),
              normalization=hf_clip.CLIP_NORMALIZATION)
  return Tensors(renamed, path), spec


def _rename(name: str, array: np.ndarray) -> dict[str, np.ndarray]:
  for pattern, replacement in RENAMES:
    if re.fullmatch(pattern, name):
      new = re.sub(pattern, replacement, name)
      break
  else:
    return {name: array}  # left for Tensors.check_all_taken to report, or taken as is (projections)
  for old, hf in BLOCK_RENAMES.items():
    new = new.replace(f".{old}.", f".{hf}.")
  # torch.nn.MultiheadAttention packs q, k, v into one in_proj [3D, D]: HF keeps them apart.
  if new.endswith((".attn.in_proj_weight", ".attn.in_proj_bias")):
    prefix, kind = new.rsplit(".attn.in_proj_", 1)
    return {f"{prefix}.self_attn.{p}_proj.{kind}": part for p, part in zip("qkv", np.split(array, 3))}
  return {new: array}
