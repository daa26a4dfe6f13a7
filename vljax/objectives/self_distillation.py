"""Self-distillation (SILC) and masked prediction (TIPS), as SigLIP 2 adds them for the last part of
training: the EMA of the weights (config ema.decay, vljax/train/ema.py) is the teacher, and it sees
the whole image.

  ema = dict(decay=0.999)
  objectives = {"sigmoid_contrastive": 1.0,
                "self_distillation": {"weight": 1.0, "start_fraction": 0.8, "local_crops": 8},
                "masked_prediction": {"weight": 0.25, "start_fraction": 0.8, "mask_ratio": 0.5}}
  model.image.mask_token = True   # masked_prediction's learned [MASK] patch embedding

self_distillation: each image gives `local_crops` random crops (area a fraction in crop_scale of the
image's, aspect in [3/4, 4/3], resized to local_size pixels on the device: no input pipeline change).
The student embeds each crop; the teacher embeds the whole image; per crop, the distance between
the student's img_emb and the teacher's, averaged over the crops and the examples.

masked_prediction: a mask_ratio of each image's patches (a uniformly random subset, from the objective's
own random stream) becomes the mask token in the student's pass; at the masked positions the student's
output tokens (img_tokens) regress the teacher's tokens of the unmasked image. Unmasked positions
take no part: the loss is the mean over masked patches only.

Distance (kind): "cosine" 1 - cos(student, teacher), or "mse" |s - t|^2 / width of both L2-normalised.
SILC and SigLIP 2 compare the two through a DINO head (an MLP to K prototypes, teacher softmax
with centering and a sharper temperature). vljax regresses the features directly, as data2vec does:
the sigmoid (or LocCa) loss keeps training the same encoder, so the teacher the student chases cannot
collapse to a constant, and the head, its prototypes, the centre state and two temperatures, a set of
hyperparameters tuned at WebLI scale, are left out. img_emb is the contrastive space, so the local
crops are pulled toward the global view in the space zero-shot and retrieval read.

start_fraction: the objective is on from step floor(start_fraction * total_steps + 0.5) on (SigLIP 2: 0.8);
before it, its passes are skipped (lax.cond on the step number inside the one compiled step), its
loss is exactly 0 and so is its gradient; metrics <name>_active log 0 or 1. SigLIP 2 also restarts the
teacher from the student at the switch; here the EMA has tracked the weights since step 0, so at the
switch it is already their recent average. Neither pass is in the train step's FLOP count (MFU).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
from jax import lax

from vljax.objectives.registry import ModelAccess, register_objective

KINDS = ("cosine", "mse")
CROP_STREAM = "local_crops"  # random streams of their own: adding these objectives changes no other randomness
MASK_STREAM = "masked_prediction"
ASPECT = (3 / 4, 4 / 3)  # the crops' aspect ratio range (Inception / DINO crops)


def _examples(batch: dict, pad_id: int) -> jnp.ndarray:
  return jnp.asarray(batch["image"].shape[0], jnp.float32)


def feature_distance(student: jnp.ndarray, teacher: jnp.ndarray, kind: str) -> jnp.ndarray:
  """[...] distances over the last axis between features [..., D], in float32, the teacher's without gradient."""
  s = student.astype(jnp.float32)
  t = lax.stop_gradient(teacher.astype(jnp.float32))
  s = s * lax.rsqrt(jnp.maximum(jnp.sum(s * s, -1, keepdims=True), 1e-12))
  t = t * lax.rsqrt(jnp.maximum(jnp.sum(t * t, -1, keepdims=True), 1e-12))
  if kind == "cosine":
    return 1.0 - jnp.sum(s * t, -1)
  return jnp.mean(jnp.square(s - t), -1)


def masked_feature_loss(student: jnp.ndarray, teacher: jnp.ndarray, mask: jnp.ndarray, kind: str) -> jnp.ndarray:
  """Mean distance over the masked positions of tokens [B, N, D]; mask [B, N] bool. Unmasked positions
  are selected away (jnp.where), so neither their values nor their gradients reach the loss."""
  chex.assert_equal_shape([student, teacher])
  chex.assert_shape(mask, student.shape[:2])
  per_token = jnp.where(mask, feature_distance(student, teacher, kind), 0.0)
  return jnp.sum(per_token) / jnp.maximum(jnp.sum(mask), 1)


def random_crops(rng: jax.Array, images: jnp.ndarray, crops: int, size: int, scale: tuple[float, float]
                 ) -> jnp.ndarray:
  """images [B, H, W, C] -> [B * crops, size, size, C] (image-major): per crop an area fraction
  uniform in `scale` and a log-uniform aspect ratio in ASPECT, the box clipped to the image and
  placed uniformly, then resized (bilinear, antialiased)."""
  b, h, w, c = images.shape
  k_area, k_aspect, k_y, k_x = jax.random.split(rng, 4)
  shape = (b, crops)
  area = jax.random.uniform(k_area, shape, minval=scale[0], maxval=scale[1]) * h * w
  aspect = jnp.exp(jax.random.uniform(k_aspect, shape, minval=math.log(ASPECT[0]), maxval=math.log(ASPECT[1])))
  ch = jnp.clip(jnp.sqrt(area / aspect), 1.0, h)
  cw = jnp.clip(jnp.sqrt(area * aspect), 1.0, w)
  top = jax.random.uniform(k_y, shape) * (h - ch)
  left = jax.random.uniform(k_x, shape) * (w - cw)

  def one(image, top, left, ch, cw):
    scale = jnp.stack([size / ch, size / cw])
    return jax.image.scale_and_translate(image.astype(jnp.float32), (size, size, c), (0, 1), scale,
                                         -jnp.stack([top, left]) * scale, method="linear", antialias=True)

  per_image = jax.vmap(jax.vmap(one, in_axes=(None, 0, 0, 0, 0)))(images, top, left, ch, cw)
  return per_image.reshape(b * crops, size, size, c).astype(images.dtype)


def gated(on: jax.Array | bool, compute: Callable[[], jnp.ndarray], name: str) -> tuple[jnp.ndarray, dict]:
  """(compute() when `on`, else exactly 0 without running it; {<name>_active: 0. or 1.})."""
  if on is True:
    loss = compute()
  else:
    loss = lax.cond(on, lambda: compute().astype(jnp.float32), lambda: jnp.zeros((), jnp.float32))
  return loss, {f"{name}_active": jnp.asarray(on, jnp.float32)}


def _check_kind(name: str, kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f"objectives.{name}.kind={kind!r} is invalid; valid: one of {list(KINDS)}")


def _teacher_ready(model: ModelAccess, name: str) -> None:
  if model.momentum_params is None:
    raise ValueError(f"objectives.{name} distils from a teacher that is the EMA of the weights, and this run keeps "
                     "none (ema.decay=0); valid: ema.decay in (0, 1), e.g. 0.999 (0.99 for a run of a few "
                     "thousand steps)")


def _patch(model: ModelAccess) -> int | None:
  """The image tower's patch size, where the model has a ViT image tower."""
  return getattr(getattr(model.module, "img", None), "patch", None)


def check_crops(name: str, image_size: int, patch: int | None, local_crops: Any, local_size: Any,
                crop_scale: Any) -> tuple[int, tuple[float, float]]:
  """(local_size in pixels, crop_scale) of valid options, else an error naming the value and what is valid."""
  if isinstance(local_crops, bool) or not isinstance(local_crops, int) or local_crops < 1:
    raise ValueError(f"objectives.{name}.local_crops={local_crops!r} is invalid; valid: a whole number >= 1 of "
                     "crops per image (SILC, SigLIP 2: 8)")
  size = image_size // 2 if local_size is None else local_size
  step = patch or 1
  if isinstance(size, bool) or not isinstance(size, int) or not step <= size <= image_size or size % step:
    raise ValueError(f"objectives.{name}.local_size={local_size!r} (crops of {size} px) does not fit: valid: a "
                     f"multiple of the patch size {step} from {step} to the image size {image_size}")
  try:
    lo, hi = (float(v) for v in crop_scale)
  except (TypeError, ValueError):
    lo, hi = -1.0, -1.0
  if not 0 < lo <= hi <= 1:
    raise ValueError(f"objectives.{name}.crop_scale={crop_scale!r} is invalid; valid: (min, max) fractions of "
                     "the image's area with 0 < min <= max <= 1 (SILC: (0.05, 0.4))")
  return size, (lo, hi)


@register_objective("self_distillation", reads=("img_emb",), couples_examples=False, count=_examples)
def self_distillation(outputs: dict, batch: dict, *, model: ModelAccess, start_fraction: float = 0.0,
                      local_crops: int = 2, local_size: int | None = None,
                      crop_scale: tuple[float, float] = (0.05, 0.4), kind: str = "cosine"
                      ) -> tuple[jnp.ndarray, dict]:
  """SILC's local-to-global consistency (the module docstring): local crops of batch["image"] through
  the student, the whole image through the EMA teacher. local_size None: half the image size."""
  name = "self_distillation"
  _check_kind(name, kind)
  on = model.switched_on(start_fraction, f"objectives.{name}")
  _teacher_ready(model, name)
  images = batch["image"]
  size, scale = check_crops(name, images.shape[1], _patch(model), local_crops, local_size, crop_scale)

  def compute():
    teacher = model.momentum(images, method="encode_image", needed_by=f"objectives.{name}")["img_emb"]
    crops = random_crops(model.rng(CROP_STREAM), images, local_crops, size, scale)
    student = model.apply(crops, method="encode_image", train=model.train, pass_name=CROP_STREAM)["img_emb"]
    student = student.reshape(images.shape[0], local_crops, -1)
    return jnp.mean(feature_distance(student, teacher[:, None], kind))

  return gated(on, compute, name)


def patch_mask(rng: jax.Array, batch: int, patches: int, masked: int) -> jnp.ndarray:
  """[batch, patches] bool with exactly `masked` True per row, a uniformly random subset."""
  scores = jax.random.uniform(rng, (batch, patches))
  chosen = lax.top_k(scores, masked)[1]
  return jnp.zeros((batch, patches), bool).at[jnp.arange(batch)[:, None], chosen].set(True)


def masked_count(name: str, patches: int, mask_ratio: Any) -> int:
  """Patches masked per image at mask_ratio; an error naming the value when it is not in (0, 1) or
  masks no patch or every one."""
  if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)) or not 0 < mask_ratio < 1:
    raise ValueError(f"objectives.{name}.mask_ratio={mask_ratio!r} is invalid; valid: a fraction in (0, 1) of each "
                     "image's patches to mask (SigLIP 2: 0.5)")
  count = int(round(mask_ratio * patches))
  if not 0 < count < patches:
    raise ValueError(f"objectives.{name}.mask_ratio={mask_ratio} masks {count} of the {patches} patches of an "
                     f"image; valid: a ratio that masks at least one patch and leaves one, in "
                     f"[{0.5 / patches:.3g}, {1 - 0.5 / patches:.3g}]")
  return count


@register_objective("masked_prediction", reads=("img_tokens",), couples_examples=False, count=_examples)
def masked_prediction(outputs: dict, batch: dict, *, model: ModelAccess, start_fraction: float = 0.0,
                      mask_ratio: float = 0.5, kind: str = "cosine") -> tuple[jnp.ndarray, dict]:
  """TIPS' masked prediction (the module docstring): the student's tokens at masked patches against
  the EMA teacher's tokens of the unmasked image."""
  name = "masked_prediction"
  _check_kind(name, kind)
  on = model.switched_on(start_fraction, f"objectives.{name}")
  _teacher_ready(model, name)
  vit = getattr(model.module, "img", None)
  if vit is None or "mask" not in inspect.signature(type(vit).__call__).parameters:
    raise ValueError(f"objectives.{name} masks the patches of a fixed-resolution ViT image tower; model "
                     f"{type(model.module).__name__}'s image tower ({type(vit).__name__}) takes no patch mask; "
                     "valid: the composable model without model.image.naflex")
  if not vit.mask_token:
    raise ValueError(f"objectives.{name} replaces patches with a learned mask token, and the image tower has none; "
                     "set model.image.mask_token=True")
  if not vit.depth:
    raise ValueError(f"objectives.{name} needs transformer layers to read a masked patch from its neighbours; the "
                     "image tower has model.image.depth=0; valid: depth >= 1")
  images = batch["image"]
  # From the image, not outputs["img_tokens"]: the training pass may have dropped patches (FLIP).
  patches = (images.shape[1] // vit.patch) * (images.shape[2] // vit.patch)
  count = masked_count(name, patches, mask_ratio)

  def compute():
    mask = patch_mask(model.rng(MASK_STREAM), images.shape[0], patches, count)
    teacher = model.momentum(images, method="encode_image", needed_by=f"objectives.{name}")["img_tokens"]
    student = model.apply(images, method="encode_image", train=model.train, mask=mask,
                          pass_name=MASK_STREAM)["img_tokens"]
    # The last `patches` tokens: the output keeps [CLS] first with image.cls_in_tokens.
    return masked_feature_loss(student[:, -patches:], teacher[:, -patches:], mask, kind)

  return gated(on, compute, name)
