"""The image-grounded text encoder of BLIP's multimodal mixture of encoder-decoder (MED), as the
composable model's `fusion` head: its settings here, its passes in vljax/models/composable.py.

  (image tokens, text ids) -> embed, [ENC] in place of the first token ([MASK] where MLM masks)
      -> blocks of bidirectional self-attention + cross-attention to the image tokens + MLP
      -> hidden [B, L, W] -> itm_head on the [ENC] row: 2 logits (no match, match)
                          `-> tied vocabulary logits (the token embedding): MLM

  model.fusion = dict(share="none", variant=..., <text architecture keys>)   its own weights
               | dict(share="blip")    the decoder's weights but self-attention (BLIP): token and
                                       position embeddings, cross-attention, MLPs and norms

With share="none" vocab_size, max_len and pad_id default to the text tower's (or the decoder's):
the same tokenizer's ids reach every head.
"""

from __future__ import annotations

from typing import Any

from vljax.models.layers import check_choice
from vljax.models.text import ARCH_KEYS, text_settings

SHARES = ("none", "blip")
# Architecture keys a share="none" encoder takes; pooling, causality and heads are fixed by its role.
FUSION_KEYS = ("variant", "share") + tuple(k for k in ARCH_KEYS if k not in ("causal", "pool", "head", "head_bias"))
INHERITED = ("vocab_size", "max_len", "pad_id")


def resolve_fusion(c: dict[str, Any]) -> None:
  """c["fusion"] (a dict or None) -> its settings: share, and the encoder's architecture."""
  given = dict(c["fusion"])
  share = given.pop("share", "none")
  check_choice("fusion.share", share, SHARES)
  if share == "blip":
    _resolve_blip(c, given)
    return
  unknown = sorted(set(given) - set(FUSION_KEYS))
  if unknown:
    raise ValueError(f"composable model.fusion: unknown key(s) {unknown}; valid: {sorted(FUSION_KEYS)}")
  if "variant" not in given:
    raise ValueError("composable model.fusion with share='none' needs variant=... (a text variant), "
                     "or share='blip' to reuse the decoder's weights")
  source = c["text"] or c["decoder"] or {}
  for key in INHERITED:
    if key in source:
      given.setdefault(key, source[key])
  c["fusion"] = dict(text_settings(**given), causal=False, share=share)


def _resolve_blip(c: dict[str, Any], given: dict[str, Any]) -> None:
  d = c["decoder"]
  if given:
    raise ValueError(f"composable model.fusion with share='blip' is the decoder's architecture; it takes no "
                     f"{sorted(given)} (set them on model.decoder, or use share='none')")
  if not d:
    raise ValueError("composable model.fusion share='blip' shares the decoder's weights: it needs "
                     "model.decoder=dict(variant=...), or share='none'")
  if d["input"] != "embed":
    raise ValueError(f"composable model.fusion share='blip' shares the decoder's token embedding, but "
                     f"decoder.input={d['input']!r} has none; valid: decoder.input='embed', or share='none'")
  c["fusion"] = dict(d, causal=False, share="blip")
