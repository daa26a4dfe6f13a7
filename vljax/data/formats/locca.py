"""The "locca" format: image-caption pairs with LocCa's decoder sequences (vljax/data/boxes.py).

{"image": float32 [b, H, W, 3], "text": int32 [b, L] (the caption, for a contrastive text tower),
 "locca_text": int32 [b, L] (each example's task sequence), "locca_mask": bool [b, L] (its trained
 tokens), "locca_task": int32 [b] (index in boxes.TASKS)}.
"""

from __future__ import annotations

import numpy as np

from vljax.data import boxes
from vljax.data.formats import CollateSettings, image_fields, register_format


@register_format("locca", fields={"image": 4, "text": 2, "locca_text": 2, "locca_mask": 2, "locca_task": 1},
                 reads_boxes=True)
def locca_collate(settings: CollateSettings, examples) -> dict[str, np.ndarray]:
  tasks = settings.locca_tasks or boxes.check_tasks(None)
  return {**image_fields(settings, examples),
          "text": settings.tokenizer.encode([ex["caption"] for ex in examples], settings.max_len),
          **boxes.batch(settings.tokenizer, examples, tasks, settings.max_len)}
