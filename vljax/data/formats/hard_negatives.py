"""The "hard_negatives" format: image-caption pairs plus each caption's twins with the binding broken
(vljax/data/caption_twins.py), for contrastive objectives that add them as negatives (NegCLIP).

  {"image": float32[b, H, W, 3], "text": int32[b, L],
   "neg_text": int32[b, K, L]  (K = len(caption_twins.TWINS): attribute twin, relation twin),
   "neg_mask": bool[b, K]      (False where a twin cannot be written; its row is padding)}
"""

from __future__ import annotations

import numpy as np

from vljax.data import caption_twins
from vljax.data.formats import CollateSettings, image_fields, register_format


@register_format("hard_negatives", fields={"image": 4, "text": 2, "neg_text": 3, "neg_mask": 2})
def hard_negatives_collate(settings: CollateSettings, examples) -> dict[str, np.ndarray]:
  captions = [ex["caption"] for ex in examples]
  twins = [[make(c) for make in caption_twins.TWINS.values()] for c in captions]
  flat = [t or "" for row in twins for t in row]
  neg_text = settings.tokenizer.encode(flat, settings.max_len).reshape(len(examples), len(caption_twins.TWINS), -1)
  return {**image_fields(settings, examples),
          "text": settings.tokenizer.encode(captions, settings.max_len),
          "neg_text": neg_text, "neg_mask": np.array([[t is not None for t in row] for row in twins], bool)}
