"""LocCa: location-aware captioning on the image tokens (SigLIP 2's decoder objective).

The decoder reads the image memory (the un-pooled ViT tokens, or the memory pooler's outputs) and is
teacher-forced on each example's task sequence, batch["locca_text"], with the loss on the tokens
batch["locca_mask"] marks: a caption, a referring expression's box as location tokens, or a box's
text (data.format="locca", vljax/data/boxes.py). The batch's "text" stays the plain caption, so a
contrastive head beside it (SigLIP 2: sigmoid_contrastive + locca) reads what it always reads, in
the same step. After training the decoder can be dropped; the image tower is what is kept.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vljax.data import boxes
from vljax.objectives.captioning import captioning_loss
from vljax.objectives.registry import ModelAccess, register_objective


def locca_tokens(batch: dict, pad_id: int) -> jnp.ndarray:
  """The tokens the LocCa loss averages over: those of locca_mask that are not padding."""
  real = (batch["locca_text"][:, 1:] != pad_id) & batch["locca_mask"][:, 1:]
  return jnp.sum(real.astype(jnp.float32))


# Its decoder pass replaces the main pass's decoder over batch["text"] (unread, so compiled away) at
# the same length: the model's declared FLOPs already count it once.
@register_objective("locca", reads=("memory",), couples_examples=False, count=locca_tokens,
                    replaces_counted_pass=True)
def locca(outputs: dict, batch: dict, *, impl: str = "gather", pad_id: int, model: ModelAccess,
          label_smoothing: float = 0.0) -> tuple[jnp.ndarray, dict]:
  """Token-mean cross-entropy of the decoder on batch["locca_text"] given outputs["memory"], over
  batch["locca_mask"]; metrics: its token accuracy and the loss of each task (locca_<task>_loss)."""
  del impl  # a token-level mean, sharded by XLA like any other reduction
  for key in ("locca_text", "locca_mask", "locca_task"):
    if key not in batch:
      raise ValueError(f"objective 'locca' reads batch[{key!r}]: set data.format='locca' (vljax/data/boxes.py)")
  ids, mask = batch["locca_text"], batch["locca_mask"]
  logits = model.apply(outputs["memory"], ids, method="caption_logits", pass_name="locca")
  loss, accuracy = captioning_loss(logits, ids, pad_id=pad_id, label_smoothing=label_smoothing, loss_mask=mask)
  metrics = {"locca_token_acc": jax.lax.stop_gradient(accuracy)}
  for k, task in enumerate(boxes.TASKS):
    rows = (batch["locca_task"] == k)[:, None]
    task_loss, _ = captioning_loss(jax.lax.stop_gradient(logits), ids, pad_id=pad_id, loss_mask=mask & rows)
    metrics[f"locca_{task}_loss"] = task_loss  # 0 when the batch holds no example of the task
  return loss, metrics
