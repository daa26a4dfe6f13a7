"""Pretrained CLIP / SigLIP / BLIP weights -> a vljax composable model config and params.

  converted = vljax.convert.import_checkpoint("ViT-B-32.pt")      # format detected: openai_clip
  model_cfg, params, data = converted
  vljax.convert.write_workdir(converted, "runs/clip-b32")          # vljax.load / init_from source

  python -m vljax.convert --checkpoint google-siglip-base --workdir runs/siglip-b16

Formats (FORMATS): "openai_clip" (OpenAI / open_clip state dict, .pt or .safetensors), "hf_clip"
and "hf_siglip" (a Hugging Face folder with config.json and model.safetensors: towers + contrastive
head), "big_vision_siglip" (.npz), "hf_blip" (a Hugging Face BlipForImageTextRetrieval folder: towers,
contrastive and fusion/ITM heads; BlipForConditionalGeneration: image tower + caption decoder; see
hf_blip.py). The model config is read off the tensors' shapes (and config.json where there is one).

Token ids: vljax's tokenizers keep id 0 for padding; a vocabulary whose id 0 is a real token is
shifted up by one (`Tokenizer.id_offset`), and so is the token table: vljax row offset + i holds
checkpoint row i, the rest are zero. Without a tokenizer the offset is the format's usual one
(DEFAULT_ID_OFFSET: 1 for CLIP's BPE, where id 0 is "!", 0 for SigLIP's SentencePiece, where id 0 is
padding). A Hugging Face folder's own tokenizer.json (CLIP) or spiece.model (SigLIP) is used when
no tokenizer is given.

Images: the patch embedding is re-expressed for inputs normalised with `input_normalization`
(a vljax.data.images preset; default the config's data.normalization, else "siglip": the [-1, 1]
pixels vljax's pipeline feeds by default), exactly: CLIP weights then need no CLIP mean/std at run
time. With "clip" they are kept as published (and the run must normalise with "clip").
"""

from __future__ import annotations

import os
from typing import NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from vljax import checkpoint_io
from vljax import config as config_lib
from vljax import metrics as metrics_lib
from vljax.convert import big_vision_siglip, files, fit, hf_blip, hf_clip, hf_siglip, openai_clip
from vljax.convert.target import IMAGE_NORMALIZATIONS, Target
from vljax.data import tokenizers
from vljax.models.resolve import padded_vocab_size
from vljax.train import checkpoint as ckpt_lib

# format -> (reader of the source layout, converter of the Hugging Face layout it yields)
FORMATS = {"openai_clip": (openai_clip.read, hf_clip.to_vljax), "hf_clip": (hf_clip.read, hf_clip.to_vljax),
           "hf_siglip": (hf_siglip.read, hf_siglip.to_vljax),
           "big_vision_siglip": (big_vision_siglip.read, hf_siglip.to_vljax),
           "hf_blip": (hf_blip.read, hf_blip.to_vljax)}
DEFAULT_ID_OFFSET = {"openai_clip": 1, "hf_clip": 1, "hf_siglip": 0, "big_vision_siglip": 0, "hf_blip": 0}
# The training objectives a converted workdir's config names (hf_blip: its data["objectives"], by model).
OBJECTIVES = {"openai_clip": "softmax_contrastive", "hf_clip": "softmax_contrastive",
              "hf_siglip": "sigmoid_contrastive", "big_vision_siglip": "sigmoid_contrastive"}
# What a Hugging Face folder's own tokenizer file becomes as a vljax tokenizer spec.
DEFAULT_NORMALIZATION = "siglip"  # [-1, 1]: what vljax's pipeline feeds unless told otherwise
HF_TOKENIZERS = {"hf_clip": ("tokenizer.json", "hf:{}"), "hf_blip": ("tokenizer.json", "hf:{}"),
                 "hf_siglip": ("spiece.model", "sentencepiece:{}?bos=none&pad=eos&clean=canonicalize")}


class Converted(NamedTuple):
  model_cfg: dict  # a composable model config (the "model" of a training config)
  params: dict  # float32 numpy arrays, laid out as that model's params
  data: dict  # image_size, max_len, tokenizer (a spec, or None), normalization the weights go with; format, source


def detect_format(path: str) -> str:
  """The format of a checkpoint path, from config.json's model_type, the suffix, or its tensor names."""
  files.check_exists(path)
  folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
  config = os.path.join(folder, "config.json")
  if os.path.isfile(config):
    model_type = files.read_json(config).get("model_type")
    by_type = {"clip": "hf_clip", "siglip": "hf_siglip", "blip": "hf_blip"}
    if model_type in by_type:
      return by_type[model_type]
    if os.path.isdir(path):
      from vljax.convert import hf_lm  # lazy: only this message needs the language models' list
      raise ValueError(f"{config}: model_type {model_type!r} is not supported; valid: {sorted(by_type)} (image-text "
                       f"models), {list(hf_lm.MODEL_TYPES)} (language models)")
  if os.path.isdir(path):
    raise FileNotFoundError(f"{path!r} is a folder without config.json; give the checkpoint file")
  if path.endswith(".npz"):
    return "big_vision_siglip"
  if path.endswith(files.SUFFIXES):
    return "openai_clip"
  raise ValueError(f"cannot tell the format of {path!r}; pass format= one of {sorted(FORMATS)}")


def import_checkpoint(path: str, format: str | None = None, image_size: int | None = None,
                      tokenizer: str | None = None, *, config: ml_collections.ConfigDict | str | None = None,
                      max_len: int | None = None, activation: str | None = None,
                      input_normalization: str | None = None) -> Converted:
  """Read a CLIP / SigLIP / BLIP checkpoint and convert it to vljax's composable model.

  image_size: resample the image position embedding to this size (default: the checkpoint's).
  tokenizer: a vljax tokenizer spec; its id_offset and vocab_size shape the token table.
  config: a training config to fit: its tokenizer, image size and text length are the defaults, its
    model must have the converted params' shapes (ValueError naming the first that differs), and its
    scan=True stacks the layers.
  max_len: keep this many text positions (default: all). activation: override the checkpoint's
    (openai_clip: "gelu" for open_clip models trained without QuickGELU).
  input_normalization: the vljax.data.images preset the model's inputs will be normalised with.
  """
  files.check_exists(path)
  format = format or detect_format(path)
  if format not in FORMATS:
    raise ValueError(f"Unknown checkpoint format {format!r}; valid: {sorted(FORMATS)}")
  if config is not None and format == "hf_blip":
    raise ValueError("config= fits contrastive towers to a recipe; hf_blip imports take none (fine-tune the "
                     "written workdir with init_from instead); valid formats with a config: "
                     f"{sorted(set(FORMATS) - {'hf_blip'})}")
  config = fit.as_config(config) if config is not None else None
  sizes = dict(tokenizer=tokenizer, image_size=image_size, max_len=max_len, vocab_size=None,
               normalization=input_normalization)
  if config is not None:
    sizes = fit.sizes(config, sizes)
  normalization = sizes["normalization"] or DEFAULT_NORMALIZATION
  if normalization not in IMAGE_NORMALIZATIONS:
    raise ValueError(f"Unknown input_normalization {normalization!r}; valid: {sorted(IMAGE_NORMALIZATIONS)}")
  tokenizer = sizes["tokenizer"] or _folder_tokenizer(format, path)
  tok = tokenizers.get_tokenizer(tokenizer) if tokenizer else None
  target = Target(id_offset=tok.id_offset if tok else DEFAULT_ID_OFFSET[format],
                  vocab_size=sizes["vocab_size"] or (padded_vocab_size(tok.vocab_size) if tok else None),
                  image_size=sizes["image_size"], max_len=sizes["max_len"], activation=activation,
                  normalization=IMAGE_NORMALIZATIONS[normalization], tokenizer=tok)
  read, to_vljax = FORMATS[format]
  tensors, spec = read(path)
  model_cfg, params, data = to_vljax(tensors, spec, target)
  params = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
  data.update(tokenizer=tokenizer, normalization=normalization, format=format, source=os.path.abspath(path))
  if config is not None:
    model_cfg, params = fit.check_against(config, model_cfg, params)
  logging.info("converted %s (%s): %s", path, format, describe(model_cfg))
  return Converted(model_cfg, params, data)


def describe(model_cfg: dict) -> str:
  """"image B/16, text B, contrastive, fusion, decoder B": the towers and heads of a converted model."""
  parts = [f"image {model_cfg['image']['variant']}"]
  if model_cfg.get("text"):
    parts.append(f"text {model_cfg['text']['variant']}")
  parts += [head if head != "decoder" else f"decoder {model_cfg[head]['variant']}"
            for head in ("contrastive", "fusion", "decoder") if model_cfg.get(head)]
  return ", ".join(parts)


def _folder_tokenizer(format: str, path: str) -> str | None:
  """The tokenizer spec of a Hugging Face folder's own tokenizer file, if it has one."""
  if format not in HF_TOKENIZERS:
    return None
  name, spec = HF_TOKENIZERS[format]
  folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
  file = os.path.abspath(os.path.join(folder, name))
  return spec.format(file) if os.path.isfile(file) else None


def write_workdir(converted: Converted, workdir: str, config: ml_collections.ConfigDict | str | None = None) -> str:
  """A vljax workdir holding the converted weights: config.json and a step-0 Orbax checkpoint of the
  params, which `vljax.load(workdir)` opens and `init_from.workdir` reads. Training continues in a new
  workdir (`init_from`): this one has no optimizer state. Returns the config.json path."""
  model_cfg, params, data = converted
  config = fit.as_config(config) if config is not None else None
  check_new_workdir(workdir)
  cfg = ml_collections.ConfigDict(config.to_dict()) if config is not None else config_lib.base_config()
  if config is None:
    cfg.model = model_cfg
    cfg.objectives = data.get("objectives") or {OBJECTIVES[data["format"]]: 1.0}
  cfg.data.image_size, cfg.data.max_len = data["image_size"], data["max_len"]
  if "normalization" in cfg.data:  # the pixel preset runs normalise with, where the config has one
    cfg.data.normalization = data["normalization"]
  if data["tokenizer"]:
    cfg.data.tokenizer = data["tokenizer"]
  else:
    logging.warning("no tokenizer given for %s: config.json keeps data.tokenizer=%r; set the model's own "
                    "(e.g. --tokenizer bpe:/path/bpe_simple_vocab_16e6.txt.gz)", data["source"], cfg.data.tokenizer)
  return save_converted(workdir, cfg, params, "composable", data)


def check_new_workdir(workdir: str) -> None:
  """Converted weights go to a workdir without checkpoints: nothing already written is replaced."""
  checkpoints = epath.Path(checkpoint_io.checkpoint_dir(workdir))
  if checkpoints.is_dir() and any(checkpoints.iterdir()):
    raise ValueError(f"{workdir!r} already holds checkpoints; write converted weights to a new workdir")


def save_converted(workdir: str, cfg: ml_collections.ConfigDict, params: dict, model_name: str, data: dict) -> str:
  """config.json and a step-0 Orbax checkpoint of `params` (no optimizer state), its metadata naming the
  source; returns config.json's path."""
  path = metrics_lib.write_text(workdir, "config.json", cfg.to_json_best_effort(indent=2))
  meta = {"model_name": model_name, "param_shapes": checkpoint_io.param_shapes(params),
          "converted_from": data["source"], "format": data["format"]}
  checkpointer = ckpt_lib.Checkpointer(workdir, every=0, keep=1, async_save=False)
  checkpointer.save(0, {"params": params}, {}, meta, force=True)
  checkpointer.close()
  return path
