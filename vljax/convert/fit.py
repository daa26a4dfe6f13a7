"""Fit converted weights to a training config: its sizes first, then a check that its model matches."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from flax import linen as nn

from vljax import checkpoint_io
from vljax import config as config_lib
from vljax.data import tokenizers
from vljax.models import composable, get_model
from vljax.models.resolve import resolve_model_config
from vljax.train import state as state_lib

# Tower settings that change what the same weights compute: they must agree, not just the shapes.
NUMERICS_KEYS = {"image": ("activation", "norm_eps", "pool", "pre_norm", "cls_posemb", "cls_in_tokens"),
                 "text": ("activation", "norm_eps", "norm_position", "causal", "pool", "pad_id")}


def as_config(config: ml_collections.ConfigDict | str) -> ml_collections.ConfigDict:
  """A training config, or the path of a recipe file ("configs/x.py" or "configs/x.py:ARG")."""
  if isinstance(config, str):
    path, _, arg = config.partition(":")
    return config_lib.load_config(path, arg or None)
  return config


def sizes(config: ml_collections.ConfigDict, given: dict[str, Any]) -> dict[str, Any]:
  """Tokenizer, image size, text length, vocab rows and pixel normalisation: `given` where set, else the
  config's."""
  text = dict(config.model.get("text") or {})
  return dict(tokenizer=given["tokenizer"] or config.data.tokenizer,
              normalization=given["normalization"] or config.data.get("normalization"),
              image_size=given["image_size"] or config.data.image_size,
              max_len=given["max_len"] or text.get("max_len") or config.data.max_len,
              vocab_size=text.get("vocab_size"))


def check_against(config: ml_collections.ConfigDict, model_cfg: dict, params: dict) -> tuple[dict, dict]:
  """(model_cfg, params) laid out as `config`'s model (stacked layers when it scans); ValueError naming
  the first param whose shape differs, or the tower settings that do."""
  expected_cfg = resolve_model_config(config, tokenizers.get_tokenizer(config.data.tokenizer))
  if expected_cfg.get("name") != "composable" or not expected_cfg.get("contrastive"):
    raise ValueError(f"converted CLIP / SigLIP weights are a composable model with a contrastive head; the "
                     f"config's model is {expected_cfg.get('name')!r} (contrastive={expected_cfg.get('contrastive')!r})")
  expected = composable.resolve_config({k: v for k, v in expected_cfg.items() if k != "name"})
  converted = composable.resolve_config({k: v for k, v in model_cfg.items() if k != "name"})
  differ = [f"{tower}.{key}: checkpoint {converted[tower][key]!r}, config {expected[tower][key]!r}"
            for tower, keys in NUMERICS_KEYS.items() for key in keys
            if converted[tower][key] != expected[tower][key]]
  if differ:
    raise ValueError("the config's model computes differently from the checkpoint: " + "; ".join(differ))
  if expected["scan"]:
    model_cfg = dict(model_cfg, scan=True)
    params = dict(params, img=stack_layers(params["img"]), txt=stack_layers(params["txt"]))
  model = get_model(expected_cfg)
  abstract = jax.eval_shape(lambda r: model.init(r, **state_lib.dummy_inputs(config, 1))["params"],
                            jax.random.PRNGKey(0))
  want = checkpoint_io.param_shapes(nn.meta.unbox(abstract))
  have = checkpoint_io.param_shapes(params)
  for name in sorted(set(want) | set(have)):
    if want.get(name) != have.get(name):
      problems = checkpoint_io.shape_mismatches(have, want)
      raise ValueError(f"the converted checkpoint does not fit the config's model: {name} is "
                       f"{_shape(have.get(name))} in the checkpoint and {_shape(want.get(name))} in the model. "
                       "All differences:\n  " + "\n  ".join(problems))
  return model_cfg, params


def _shape(shape) -> str:
  return "absent" if shape is None else str(tuple(shape))


def stack_layers(tower: dict) -> dict:
  """A tower's encoder block_0..block_{n-1} -> one "layers" tree with a leading layer axis (scan=True)."""
  encoder = dict(tower["encoder"])
  blocks = [encoder.pop(f"block_{i}") for i in range(len([k for k in encoder if k.startswith("block_")]))]
  if blocks:
    encoder["layers"] = jax.tree.map(lambda *xs: np.stack(xs), *blocks)
  return dict(tower, encoder=encoder)
