"""Checkpoint files -> {name: float32 numpy array}: safetensors, numpy .npz, torch .pt/.bin."""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any

import numpy as np

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
SUFFIXES = (".safetensors", ".npz", *TORCH_SUFFIXES)
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def check_exists(path: str, what: str = "checkpoint") -> None:
  if not os.path.exists(path):
    raise FileNotFoundError(f"{what} {path!r} does not exist")


def read_json(path: str) -> dict[str, Any]:
  check_exists(path, "file")
  with open(path) as f:
    return json.load(f)


def hf_folder_files(path: str) -> tuple[str, str]:
  """(config.json, weights file) of a Hugging Face model: a folder, or a weights file with config.json beside it."""
  check_exists(path)
  folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
  config = os.path.join(folder, "config.json")
  if not os.path.isfile(config):
    raise FileNotFoundError(f"Hugging Face checkpoint {path!r}: no config.json in {folder!r}; it holds the "
                            "number of heads, the activation and the LayerNorm epsilon")
  if not os.path.isdir(path):
    return config, path
  for name in HF_WEIGHTS:
    if os.path.isfile(os.path.join(folder, name)):
      return config, os.path.join(folder, name)
  raise FileNotFoundError(f"Hugging Face checkpoint folder {path!r} holds none of {list(HF_WEIGHTS)} "
                          "(sharded checkpoints: merge them into one file first)")


def hf_image_normalization(folder: str, default: tuple) -> tuple:
  """(mean, std) from a Hugging Face model's preprocessor_config.json, `default` without one."""
  path = os.path.join(folder, "preprocessor_config.json")
  if not os.path.isfile(path):
    return default
  c = read_json(path)
  return tuple(c.get("image_mean", default[0])), tuple(c.get("image_std", default[1]))


def read_tensors(path: str) -> dict[str, np.ndarray]:
  """Every tensor of a checkpoint file, by name, as float32 numpy arrays (bf16/fp16 upcast)."""
  check_exists(path)
  suffix = os.path.splitext(path)[1]
  if suffix == ".safetensors":
    import safetensors.numpy
    arrays = safetensors.numpy.load_file(path)
  elif suffix == ".npz":
    with np.load(path, allow_pickle=False) as z:
      arrays = {name: z[name] for name in z.files}
  elif suffix in TORCH_SUFFIXES:
    arrays = _read_torch(path)
  else:
    raise ValueError(f"checkpoint {path!r}: unknown file type {suffix!r}; valid: {list(SUFFIXES)} or a Hugging "
                     "Face model folder")
  return {name: np.asarray(a, np.float32) for name, a in arrays.items()}


def _read_torch(path: str) -> dict[str, np.ndarray]:
  """A torch state dict (or a training checkpoint holding one under "state_dict"), or a TorchScript
  archive (OpenAI's published CLIP files), as numpy."""
  try:
    import torch
  except ImportError as e:
    raise ImportError(f"reading {path!r} needs PyTorch (pip install torch); .safetensors and .npz "
                      "checkpoints do not") from e
  if _is_torchscript(path):
    state = torch.jit.load(path, map_location="cpu").state_dict()
  else:
    state = torch.load(path, map_location="cpu", weights_only=True)
  if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
    state = state["state_dict"]  # open_clip training checkpoints
  if not isinstance(state, dict):
    raise ValueError(f"{path!r} holds a {type(state).__name__}, not a state dict of tensors")
  out = {}
  for name, value in state.items():
    if torch.is_tensor(value):
      # "module." comes from DistributedDataParallel in open_clip's training checkpoints.
      out[name.removeprefix("module.")] = value.detach().float().cpu().numpy()
  return out


def _is_torchscript(path: str) -> bool:
  """TorchScript zips hold code and constants.pkl; torch.save zips hold data.pkl alone."""
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as z:
    return any(name.endswith("constants.pkl") for name in z.namelist())
