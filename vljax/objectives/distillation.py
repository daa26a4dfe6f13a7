"""Distillation from a frozen teacher (config `teacher`: vljax/train/teacher.py): the student's
embeddings or image-text similarities pulled toward a trained model's, combinable with the
student's own objectives.

  teacher = dict(workdir="runs/clip_b16")
  objectives = {"softmax_contrastive": 1.0,
                "distill_logits": {"weight": 1.0},                          # open_clip's --distill
                "distill_embeddings": {"weight": 1.0, "kind": "cosine"}}    # feature distillation

distill_logits: the teacher's and the student's image-text similarity matrices over the global batch
(the "gather" form: XLA gathers the embeddings), as softmax distributions row by row, both ways:

  loss = ( mean_i KL(softmax(T_i2t[i]) || softmax(S_i2t[i])) + mean_j KL(softmax(T_t2i[j]) || softmax(S_t2i[j])) ) / 2
  S = s * zimg @ ztxt.T,  T = s_t * zimg_t @ ztxt_t.T

s and s_t are each model's own logit scale (open_clip's form), or 1 / temperature for both with
temperature > 0. open_clip's DistillClipLoss takes the cross-entropy against the teacher's softmax;
KL differs from it by the teacher's entropy, which no parameter of the student moves: the same
gradient, and 0 where the student's similarities equal the teacher's. The similarity matrices are
[B, B] whatever the widths: the teacher's embedding width need not be the student's.

distill_embeddings: per example, the student's img_emb and txt_emb against the teacher's, averaged
over the two sides; kind="cosine": 1 - cos(z, z_t); kind="mse": |z - z_t|^2 (summed over the width;
for unit vectors 2 - 2 cos). It needs the teacher's widths (shapes) to be the student's: the student
has no projection to another width, and a mismatch is refused at start, naming both (setting
model.contrastive.embed_dim to the teacher's, or distill_logits, serves).

The teacher runs deterministic (train=False), under stop_gradient; its forward passes are not the
student model's and are not in the train step's FLOP count (MFU, vljax.compare's budgets list these
objectives as running uncounted passes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from vljax.objectives.contrastive import _check_embeddings, _logits, _scalar
from vljax.objectives.registry import ModelAccess, register_objective

KINDS = ("cosine", "mse")
# Objectives that compare the student's embeddings with the teacher's element by element: the
# teacher's widths must be the student's (checked at start by vljax/train/teacher.py).
SAME_WIDTH = ("distill_embeddings",)
# Objectives that run the teacher: a config naming one without teacher.workdir is refused at start.
USES_TEACHER = ("distill_logits", "distill_embeddings")


def teacher_embeddings(model: ModelAccess, batch: dict, needed_by: str) -> dict:
  """The teacher's img_emb, txt_emb and logit_scale of the batch (an image-only and a text-only pass)."""
  image = model.teacher(image=batch["image"], needed_by=needed_by)
  text = model.teacher(text=batch["text"], needed_by=needed_by)
  return {"img_emb": image["img_emb"], "txt_emb": text["txt_emb"], "logit_scale": image["logit_scale"]}


def kl_rows(teacher_logits: jnp.ndarray, student_logits: jnp.ndarray) -> jnp.ndarray:
  """Mean over rows of KL(softmax(teacher row) || softmax(student row)), in float32."""
  log_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32), axis=-1)
  log_s = jax.nn.log_softmax(student_logits.astype(jnp.float32), axis=-1)
  return jnp.mean(jnp.sum(jnp.exp(log_t) * (log_t - log_s), axis=-1))


def similarity_distillation_loss(zimg, ztxt, zimg_t, ztxt_t, scale, scale_t) -> jnp.ndarray:
  """distill_logits' loss (the module docstring): embeddings L2-normalised, [N, E] and [N, E_t]."""
  _check_embeddings(zimg, ztxt)
  _check_embeddings(zimg_t, ztxt_t)
  if zimg.shape[0] != zimg_t.shape[0]:
    raise ValueError(f"distill_logits: the student scored {zimg.shape[0]} examples, the teacher {zimg_t.shape[0]}")
  logits = _logits(zimg, ztxt, _scalar(scale, "logit_scale"))
  logits_t = lax.stop_gradient(_logits(zimg_t, ztxt_t, _scalar(scale_t, "the teacher's logit_scale")))
  return (kl_rows(logits_t, logits) + kl_rows(logits_t.T, logits.T)) / 2


def embedding_distance(z: jnp.ndarray, z_t: jnp.ndarray, kind: str) -> jnp.ndarray:
  """Per example [N]: 1 - cos or the squared distance between z and z_t, averaged over queries
  where the embeddings are in query form [N, Q, E]."""
  if z.shape != z_t.shape:
    raise ValueError(f"objectives.distill_embeddings: the teacher's embeddings have shape {tuple(z_t.shape[1:])} "
                     f"(width {z_t.shape[-1]}) per example, the student's {tuple(z.shape[1:])} (width "
                     f"{z.shape[-1]}), and the student has no projection to the teacher's width; valid: "
                     f"model.contrastive.embed_dim={z_t.shape[-1]}, or objectives.distill_logits (any widths)")
  z, z_t = z.astype(jnp.float32), lax.stop_gradient(z_t.astype(jnp.float32))
  if kind == "cosine":
    unit = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # noqa: E731
    per = 1.0 - jnp.sum(unit(z) * unit(z_t), axis=-1)
  else:
    per = jnp.sum(jnp.square(z - z_t), axis=-1)
  return per.reshape(per.shape[0], -1).mean(axis=1)


def _examples(batch: dict, pad_id: int) -> jnp.ndarray:
  del pad_id
  return jnp.asarray(batch["text"].shape[0], jnp.float32)


@register_objective("distill_logits", reads=("img_emb", "txt_emb"), shared=("logit_scale",),
                    couples_examples=True, impls=("gather",))
def distill_logits(outputs: dict, batch: dict, *, model: ModelAccess, temperature: float = 0.0
                   ) -> tuple[jnp.ndarray, dict]:
  """KL from the teacher's image-text softmax to the student's, both ways, over the global batch;
  temperature 0: each model's own logit_scale, else 1 / temperature for both."""
  if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0:
    raise ValueError(f"objectives.distill_logits.temperature={temperature!r} is invalid; valid: 0 (each model's own "
                     "logit_scale, open_clip's) or a number > 0 (both similarities divided by it)")
  t = teacher_embeddings(model, batch, "objectives.distill_logits")
  scale, scale_t = outputs["logit_scale"], t["logit_scale"]
  if temperature:
    scale = scale_t = jnp.asarray(1.0 / temperature, jnp.float32)
  loss = similarity_distillation_loss(outputs["img_emb"], outputs["txt_emb"], t["img_emb"], t["txt_emb"], scale,
                                      scale_t)
  return loss, {"teacher_logit_scale": _scalar(t["logit_scale"], "the teacher's logit_scale")}


@register_objective("distill_embeddings", reads=("img_emb", "txt_emb"), couples_examples=False, count=_examples)
def distill_embeddings(outputs: dict, batch: dict, *, model: ModelAccess, kind: str = "cosine"
                       ) -> tuple[jnp.ndarray, dict]:
  """Mean over examples of the distance (kind) between the student's embeddings and the teacher's,
  averaged over the image and the text side."""
  if kind not in KINDS:
    raise ValueError(f"objectives.distill_embeddings.kind={kind!r} is invalid; valid: one of {list(KINDS)}")
  t = teacher_embeddings(model, batch, "objectives.distill_embeddings")
  image = embedding_distance(outputs["img_emb"], t["img_emb"], kind)
  text = embedding_distance(outputs["txt_emb"], t["txt_emb"], kind)
  return jnp.mean((image + text) / 2), {}
