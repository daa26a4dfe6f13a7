"""The "caption" format: image-caption pairs, {"image": float32[b, H, W, 3], "text": int32[b, L]}."""

from __future__ import annotations

import numpy as np

from vljax.data import images
from vljax.data.formats import CollateSettings, register_format


@register_format("caption", fields={"image": 4, "text": 2})
def caption_collate(settings: CollateSettings, examples) -> dict[str, np.ndarray]:
  pixels = images.normalize(np.stack([ex["image"] for ex in examples]), settings.normalization)
  return {"image": pixels, "text": settings.tokenizer.encode([ex["caption"] for ex in examples], settings.max_len)}
