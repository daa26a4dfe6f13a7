"""big_vision SigLIP `.npz` (params/img/..., params/txt/..., params/t, params/b) -> vljax composable.

The arrays are mapped onto Hugging Face SigLIP's names and layouts, as transformers'
convert_siglip_to_hf does, and converted by `hf_siglip`. Heads come from the attention kernels'
shapes [width, heads, head_dim]; the activation is flax's tanh GELU and the LayerNorm epsilon 1e-6.
Layers saved scanned (one "encoderblock" with a leading layer axis) are split first.
"""

from __future__ import annotations

import re

import numpy as np

from vljax.convert import files
from vljax.convert.hf_siglip import SIGLIP_NORMALIZATION
from vljax.convert.towers import Tensors

BLOCK = {"LayerNorm_0": "layer_norm1", "LayerNorm_1": "layer_norm2", "MlpBlock_0/Dense_0": "mlp.fc1",
         "MlpBlock_0/Dense_1": "mlp.fc2"}
ATTENTION = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "out": "out_proj"}
TOWERS = {"img/Transformer": "vision_model", "txt/Encoder_0": "text_model"}
_same = lambda a: a
_rows = lambda a: a.reshape(-1, a.shape[-1])  # [1, N, D] position tables -> [N, D]
_flat = lambda a: a.reshape(-1)
# Arrays outside the encoder blocks: big_vision name -> (Hugging Face name, layout change).
FIXED = {"img/embedding/kernel": ("vision_model.embeddings.patch_embedding.weight", lambda a: a.transpose(3, 2, 0, 1)),
         "img/embedding/bias": ("vision_model.embeddings.patch_embedding.bias", _same),
         "img/pos_embedding": ("vision_model.embeddings.position_embedding.weight", _rows),
         "txt/Embed_0/embedding": ("text_model.embeddings.token_embedding.weight", _same),
         "txt/pos_embedding": ("text_model.embeddings.position_embedding.weight", _rows),
         "img/MAPHead_0/probe": ("vision_model.head.probe", _same),
         "t": ("logit_scale", _flat), "b": ("logit_bias", _flat)}


def read(path: str) -> tuple[Tensors, dict]:
  """(tensors in Hugging Face SigLIP names, spec) of a big_vision SigLIP checkpoint."""
  arrays = {name.removeprefix("params/"): a for name, a in files.read_tensors(path).items()}
  if "img/embedding/kernel" not in arrays or "txt/Embed_0/embedding" not in arrays:
    raise ValueError(f"{path!r} lacks img/embedding/kernel or txt/Embed_0/embedding: not a big_vision two-tower "
                     f"checkpoint (first arrays: {sorted(arrays)[:6]})")
  arrays = _unscan(arrays)
  out = {}
  for name, array in arrays.items():
    out.update(_rename(name, array))
  _pack_map_head(out)
  heads = lambda tower: arrays[f"{tower}/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel"].shape[1]
  spec_for = lambda tower: dict(num_heads=heads(tower), activation="gelu_tanh", norm_eps=1e-6)
  spec = dict(vision=spec_for("img/Transformer"), text=spec_for("txt/Encoder_0"), normalization=SIGLIP_NORMALIZATION)
  return Tensors(out, path), spec


def _unscan(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """".../encoderblock/X" [depth, ...] -> ".../encoderblock_N/X" for every layer N."""
  out = {}
  for name, array in arrays.items():
    if m := re.fullmatch(r"(.*)/encoderblock/(.*)", name):
      out.update({f"{m.group(1)}/encoderblock_{i}/{m.group(2)}": layer for i, layer in enumerate(array)})
    else:
      out[name] = array
  return out


def _rename(name: str, a: np.ndarray) -> dict[str, np.ndarray]:
  """One big_vision array -> its Hugging Face name(s) and torch layout."""
  if name in FIXED:
    hf_name, layout = FIXED[name]
    return {hf_name: layout(a)}
  for src, dst in TOWERS.items():
    if m := re.fullmatch(re.escape(src) + r"/encoderblock_(\d+)/(.*)", name):
      return _rename_layer(f"{dst}.encoder.layers.{m.group(1)}", m.group(2), a)
    if m := re.fullmatch(re.escape(src) + r"/encoder_norm/(scale|bias)", name):
      norm = "post_layernorm" if dst == "vision_model" else "final_layer_norm"
      return {f"{dst}.{norm}.{_param(m.group(1))}": a}
  if m := re.fullmatch(r"img/MAPHead_0/(.*)", name):
    return _rename_layer("vision_model.head", m.group(1), a, attention="attention", norm="LayerNorm_0")
  if m := re.fullmatch(r"txt/head/(kernel|bias)", name):
    return {f"text_model.head.{_param(m.group(1))}": a.T}
  return {name: a}  # left for Tensors.check_all_taken to report


def _rename_layer(prefix: str, rest: str, a: np.ndarray, attention: str = "self_attn",
                  norm: str | None = None) -> dict[str, np.ndarray]:
  """Names inside an encoder block, or the MAP head (its LayerNorm_0 is "layernorm"; its q/k/v are
  packed afterwards by `_pack_map_head`)."""
  module, _, param = rest.rpartition("/")
  if m := re.fullmatch(r"MultiHeadDotProductAttention_0/(query|key|value|out)", module):
    kind = m.group(1)
    if kind == "out":  # [heads, head_dim, width] -> [width, heads * head_dim]
      value = a.reshape(-1, a.shape[-1]).T if param == "kernel" else a
    else:  # [width, heads, head_dim] -> [heads * head_dim, width]
      value = a.reshape(a.shape[0], -1).T if param == "kernel" else a.reshape(-1)
    return {f"{prefix}.{attention}.{ATTENTION[kind]}.{_param(param)}": value}
  if module == norm:
    return {f"{prefix}.layernorm.{_param(param)}": a}
  if module in BLOCK:
    return {f"{prefix}.{BLOCK[module]}.{_param(param)}": a.T if param == "kernel" else a}
  return {f"{prefix}/{rest}": a}


def _pack_map_head(arrays: dict[str, np.ndarray]) -> None:
  """The MAP head's q, k, v -> torch MultiheadAttention's in_proj_weight / in_proj_bias, as HF has them."""
  prefix = "vision_model.head.attention"
  for kind in ("weight", "bias"):
    names = [f"{prefix}.{p}_proj.{kind}" for p in "qkv"]
    if all(n in arrays for n in names):
      arrays[f"{prefix}.in_proj_{kind}"] = np.concatenate([arrays.pop(n) for n in names])


def _param(flax_name: str) -> str:
  return {"kernel": "weight", "scale": "weight", "bias": "bias"}[flax_name]
