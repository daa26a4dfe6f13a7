"""A run's model config completed from what its tokenizer, data and precision decide.

Training, inference and weight import build the same model from a run's config through here.
"""

from __future__ import annotations

import ml_collections

from vljax import models
from vljax.models import registry

VOCAB_MULTIPLE = 128


def padded_vocab_size(n: int) -> int:
  """Vocab rounded up to a multiple of 128, so `vocab` shards over any tensor axis that divides it."""
  return -(-n // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def resolve_model_config(cfg: ml_collections.ConfigDict, tokenizer) -> dict:
  """The model config with what the data and precision decide filled in."""
  m = registry.canonical_config(cfg.model)  # a legacy name: its composable config
  for key in ("text", "decoder", "qformer"):  # text towers, decoders and a Q-Former read the tokenizer's ids
    if m.get(key):
      m[key] = dict(m[key])
      m[key].setdefault("vocab_size", padded_vocab_size(tokenizer.vocab_size))
      m[key].setdefault("max_len", cfg.data.max_len)
  if getattr(models.MODELS.get(m.get("name")), "needs_image_token", False):
    m.setdefault("image_token_id", tokenizer.image_id)
  m.setdefault("dtype", cfg.precision.compute_dtype)
  m.setdefault("param_dtype", cfg.precision.param_dtype)
  return m
