"""Hugging Face layout -> vljax params: the pieces every format shares.

Every source format is first renamed into the Hugging Face CLIP / SigLIP names and torch layouts
(Linear weights [out, in], convs OIHW); this module turns those into vljax's trees (kernels
[in, ..., out], attention kernels [width, heads, head_dim], convs HWIO).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable

import jax
import numpy as np

from vljax.convert import files
from vljax.models.layers import ACTIVATIONS

# Hugging Face `hidden_act` -> vljax activation; "gelu_new"/"gelu_pytorch_tanh" are the tanh form.
HF_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
                  "gelu_new": "gelu_tanh"}


class Tensors:
  """A checkpoint's named arrays that remembers which were taken, so that leftovers can be reported:
  a tensor nobody converted means a layout this converter does not know, never silently dropped."""

  def __init__(self, arrays: dict[str, np.ndarray], source: str):
    self.arrays, self.source, self.taken = arrays, source, set()

  def take(self, name: str) -> np.ndarray:
    if name not in self.arrays:
      raise ValueError(f"{self.source}: no tensor {name!r}; is it a checkpoint of this format? Its first "
                       f"tensors are {sorted(self.arrays)[:6]}")
    self.taken.add(name)
    return self.arrays[name]

  def count(self, pattern: str) -> int:
    """Number of distinct integers captured by `pattern` (one group) over the names: a depth."""
    found = {int(m.group(1)) for name in self.arrays if (m := re.fullmatch(pattern, name))}
    if found != set(range(len(found))):
      raise ValueError(f"{self.source}: layers {sorted(found)} of {pattern!r} are not numbered 0..n-1")
    return len(found)

  def check_all_taken(self, ignore: Iterable[str] = ()) -> None:
    """ValueError naming the tensors no converter used (patterns in `ignore` excepted)."""
    left = sorted(n for n in self.arrays if n not in self.taken and not any(re.fullmatch(p, n) for p in ignore))
    if left:
      raise ValueError(f"{self.source}: {len(left)} tensors were not converted, e.g. {left[:5]}; this layout "
                       "is not supported")


def activation_from_hf(name: str) -> str:
  if name not in HF_ACTIVATIONS:
    raise ValueError(f"Unknown hidden_act {name!r} in the Hugging Face config; valid: {sorted(HF_ACTIVATIONS)}")
  return HF_ACTIVATIONS[name]


def hf_tower_spec(config: dict, defaults: dict) -> dict:
  """Heads, activation and LayerNorm epsilon of a Hugging Face tower config (`defaults` for missing keys)."""
  c = dict(defaults, **config)
  return dict(num_heads=c["num_attention_heads"], activation=activation_from_hf(c["hidden_act"]),
              norm_eps=c["layer_norm_eps"])


def read_hf_two_tower(path: str, model_type: str, other: str, vision_defaults: dict, text_defaults: dict,
                      normalization: tuple) -> tuple[Tensors, dict, dict]:
  """(tensors, spec, config.json) of a Hugging Face two-tower folder (or its weights file with config.json
  beside it); `other` names the format to use when the folder holds the other model type."""
  config_path, weights = files.hf_folder_files(path)
  config = files.read_json(config_path)
  if config.get("model_type") != model_type:
    raise ValueError(f"{config_path}: model_type {config.get('model_type')!r} is not {model_type!r}; "
                     f"use format {other!r} for that model")
  spec = dict(vision=hf_tower_spec(config.get("vision_config", {}), vision_defaults),
              text=hf_tower_spec(config.get("text_config", {}), text_defaults),
              normalization=files.hf_image_normalization(os.path.dirname(config_path), normalization))
  return Tensors(files.read_tensors(weights), weights), spec, config


def check_activation(name: str) -> str:
  if name not in ACTIVATIONS:
    raise ValueError(f"Unknown activation {name!r}; valid: {sorted(ACTIVATIONS)}")
  return name


def layer_norm(t: Tensors, prefix: str) -> dict:
  return {"scale": t.take(f"{prefix}.weight"), "bias": t.take(f"{prefix}.bias")}


def linear(t: Tensors, prefix: str, bias: bool = True) -> dict:
  out = {"kernel": t.take(f"{prefix}.weight").T}
  if bias:
    out["bias"] = t.take(f"{prefix}.bias")
  return out


def attention(q_w, q_b, k_w, v_w, v_b, o_w, o_b, heads: int) -> dict:
  """vljax attention params from torch-layout projections ([out, in] weights).

  The key bias is left out: it adds q.b_k to every logit of a query alike, and softmax cancels it.
  """
  width = q_w.shape[0]
  if width % heads:
    raise ValueError(f"attention width {width} is not divisible by {heads} heads")
  split = lambda w: w.T.reshape(w.shape[1], heads, width // heads)  # keys/values of cross-attention: the memory's width
  return {"query": {"kernel": split(q_w), "bias": q_b.reshape(heads, -1)},
          "key": {"kernel": split(k_w)},
          "value": {"kernel": split(v_w), "bias": v_b.reshape(heads, -1)},
          "out": {"kernel": o_w.T.reshape(heads, width // heads, -1), "bias": o_b}}


def self_attention(t: Tensors, prefix: str, heads: int) -> dict:
  """HF q_proj/k_proj/v_proj/out_proj under `prefix` (k_proj.bias read and dropped)."""
  w = lambda name: t.take(f"{prefix}.{name}.weight")
  b = lambda name: t.take(f"{prefix}.{name}.bias")
  b("k_proj")
  return attention(w("q_proj"), b("q_proj"), w("k_proj"), w("v_proj"), b("v_proj"), w("out_proj"),
                   b("out_proj"), heads)


def packed_attention(t: Tensors, prefix: str, heads: int) -> dict:
  """torch.nn.MultiheadAttention's in_proj_weight [3D, D] (q, k, v stacked) and out_proj."""
  q_w, k_w, v_w = np.split(t.take(f"{prefix}.in_proj_weight"), 3)
  q_b, _, v_b = np.split(t.take(f"{prefix}.in_proj_bias"), 3)
  return attention(q_w, q_b, k_w, v_w, v_b, t.take(f"{prefix}.out_proj.weight"),
                   t.take(f"{prefix}.out_proj.bias"), heads)


def encoder(t: Tensors, prefix: str, heads: int, final_norm: str) -> tuple[dict, int]:
  """(vljax Transformer params, depth) of HF `{prefix}.layers.N.*` + the final LayerNorm `final_norm`."""
  depth = t.count(re.escape(prefix) + r"\.layers\.(\d+)\..*")
  params = {}
  for i in range(depth):
    p = f"{prefix}.layers.{i}"
    params[f"block_{i}"] = {"ln1": layer_norm(t, f"{p}.layer_norm1"),
                            "attn": self_attention(t, f"{p}.self_attn", heads),
                            "ln2": layer_norm(t, f"{p}.layer_norm2"),
                            "mlp": {"fc1": linear(t, f"{p}.mlp.fc1"), "fc2": linear(t, f"{p}.mlp.fc2")}}
  params["encoder_norm"] = layer_norm(t, final_norm)
  return params, depth


def patch_embedding(weight: np.ndarray, bias: np.ndarray | None, source_norm, target_norm) -> dict:
  """OIHW conv -> vljax HWIO kernel + bias, re-expressed for inputs normalised with `target_norm`
  instead of `source_norm` (each a (mean, std) pair over RGB in [0, 1]).

  With u the [0, 1] pixel, the checkpoint saw (u - m_s) / s_s = x * s_t / s_s + (m_t - m_s) / s_s
  for x = (u - m_t) / s_t: a per-channel scale of the kernel and a constant that a VALID patch
  conv turns into a bias, exactly.
  """
  kernel = weight.transpose(2, 3, 1, 0)
  bias = np.zeros(kernel.shape[-1], np.float32) if bias is None else bias
  (m_s, s_s), (m_t, s_t) = (tuple(np.asarray(v, np.float64) for v in n) for n in (source_norm, target_norm))
  scale, shift = s_t / s_s, (m_t - m_s) / s_s
  folded = kernel.astype(np.float64) * scale[None, None, :, None]
  bias = bias + np.einsum("hwco,c->o", kernel.astype(np.float64), shift)
  return {"kernel": folded.astype(np.float32), "bias": bias.astype(np.float32)}


def grid_of(num_positions: int, what: str) -> int:
  grid = math.isqrt(num_positions)
  if grid * grid != num_positions:
    raise ValueError(f"{what}: {num_positions} position rows are not a square grid")
  return grid


def resize_posemb(posemb: np.ndarray, grid: int, new_grid: int, num_prefix: int = 0,
                  method: str = "bicubic") -> np.ndarray:
  """Learned ViT position embedding [prefix + grid^2, D] -> [prefix + new_grid^2, D]: the grid part
  resampled as an image (jax.image.resize), the prefix rows (CLIP's class token) kept."""
  if new_grid == grid:
    return posemb
  prefix, rows = posemb[:num_prefix], posemb[num_prefix:].reshape(grid, grid, -1)
  resized = jax.image.resize(rows, (new_grid, new_grid, rows.shape[-1]), method=method)
  return np.concatenate([prefix, np.asarray(resized, np.float32).reshape(new_grid * new_grid, -1)])


def token_table(embedding: np.ndarray, offset: int, rows: int) -> np.ndarray:
  """Checkpoint token embedding [V, D] -> vljax's [rows, D]: vljax id offset + i is checkpoint id i.

  The other rows (the pad row when offset is 1, the BOS/EOS a tokenizer appends, "<image>"/"<eoc>",
  padding to a multiple of 128) are zero: ids the checkpoint never saw start out with no content.
  """
  vocab, width = embedding.shape
  if offset + vocab > rows:
    raise ValueError(f"the checkpoint's token table has {vocab} rows; with id offset {offset} they need "
                     f"{offset + vocab} vljax ids, but the vocabulary has {rows}")
  out = np.zeros((rows, width), np.float32)
  out[offset:offset + vocab] = embedding
  return out
