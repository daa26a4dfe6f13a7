"""The "caption" format: image-caption pairs, {"image": float32[b, H, W, 3], "text": int32[b, L]}
(data.resize="device": uint8 canvases and each crop's box, formats.image_fields)."""

from __future__ import annotations

import numpy as np

from vljax.data.formats import CollateSettings, image_fields, register_format


@register_format("caption", fields={"image": 4, "text": 2})
def caption_collate(settings: CollateSettings, examples) -> dict[str, np.ndarray]:
  return {**image_fields(settings, examples),
          "text": settings.tokenizer.encode([ex["caption"] for ex in examples], settings.max_len)}
