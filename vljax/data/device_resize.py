"""The device's half of data.resize="device": crop regions shipped as uint8 canvases -> model pixels.

The host decodes each image (at a reduced JPEG scale where the crop allows it), crops it and puts
the region at the top left of a fixed canvas (vljax/data/images.py crop_to_canvas), so a batch is
uint8 [B, C, C, 3] plus each crop's box in its canvas, "image_box" float32 [B, 4] (top, left,
bottom, right; fractional, as the crop was drawn). Inside the jitted step every box is resized to the model's size (antialiased bicubic,
jax.image.scale_and_translate) and normalised. The host's work per image drops to decoding and a
copy, the most expensive part of the input pipeline, and a quarter of the bytes cross to the device
(uint8, not float32).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vljax.data import images
from vljax.data.images import BOX_KEY
RESIZE_MODES = ("host", "device")


def check_resize(data_cfg) -> bool:
  """Whether data_cfg resizes on the device; its resize and canvas_size settings checked."""
  mode = data_cfg.get("resize", "host")
  if mode not in RESIZE_MODES:
    raise ValueError(f"data.resize={mode!r} is unknown; valid: {list(RESIZE_MODES)}")
  size = int(data_cfg.get("image_size", 64))
  canvas = canvas_size(data_cfg)
  if canvas < size:
    raise ValueError(f"data.canvas_size={canvas} must be at least data.image_size={size} "
                     f"(0 picks {default_canvas(size)} for this image size)")
  return mode == "device"


def default_canvas(size: int) -> int:
  """The smallest multiple of 32 >= 2.25 * size: 512 for 224 px, so COCO-size (500x375) crops fit
  whole, and a crop that a reduced-scale JPEG decode brings to [size, 2 * size) on its shorter side
  fits unless its aspect ratio is far from square. Larger crops are shrunk on the host first."""
  return -(-int(2.25 * size) // 32) * 32


def canvas_size(data_cfg) -> int:
  """The side of the canvases crops are shipped in: data.canvas_size, or default_canvas when 0."""
  return int(data_cfg.get("canvas_size", 0)) or default_canvas(int(data_cfg.get("image_size", 64)))


def _resize_one(canvas: jax.Array, box: jax.Array, size: int) -> jax.Array:
  """uint8 [C, C, 3] and its crop box (top, left, bottom, right) -> float32 [size, size, 3] in [0, 255]."""
  c = canvas.shape[0]
  start, end = box[:2], jnp.maximum(box[2:], box[:2] + 1e-3)
  # Edges repeated past the pixels the box touches: the antialiasing kernel never reads padding.
  last = jnp.clip(jnp.ceil(end).astype(jnp.int32), 1, c) - 1
  rows, cols = jnp.minimum(jnp.arange(c), last[0]), jnp.minimum(jnp.arange(c), last[1])
  region = canvas[rows][:, cols].astype(jnp.float32)
  scale = size / (end - start)
  return jax.image.scale_and_translate(region, (size, size, 3), (0, 1), scale, -start * scale,
                                       method="cubic", antialias=True)


def resize_and_normalize(pixels: jax.Array, boxes: jax.Array, size: int, normalization: str) -> jax.Array:
  """uint8 canvases [..., C, C, 3] and their boxes [..., 4] -> float32 [..., size, size, 3], normalised."""
  images.check_normalization(normalization)
  lead = pixels.shape[:-3]
  flat = jax.vmap(_resize_one, in_axes=(0, 0, None))(pixels.reshape(-1, *pixels.shape[-3:]),
                                                     boxes.reshape(-1, 4).astype(jnp.float32), size)
  mean, std = (np.asarray(v, np.float32) for v in images.NORMALIZATIONS[normalization])
  # As the host path: pixels rounded and clipped to uint8 values, then (x / 255 - mean) / std.
  flat = jnp.clip(jnp.round(flat), 0, 255)
  return ((flat / 255 - mean) / std).reshape(*lead, size, size, 3)


def prepare_batch(batch: dict, size: int, normalization: str) -> dict:
  """A batch as the model reads it: a device-resize batch's canvases resized, its boxes dropped."""
  if BOX_KEY not in batch:
    return batch
  out = {k: v for k, v in batch.items() if k != BOX_KEY}
  out["image"] = resize_and_normalize(batch["image"], batch[BOX_KEY], size, normalization)
  return out
