"""Image decoding, cropping and normalisation for real data (run inside grain workers).

  decode_image(bytes)               -> PIL image in RGB, or CorruptImageError
  random_resized_crop(im, size, rng) -> uint8 [size, size, 3]   (training)
  crop_for_device(im, box, size, canvas) -> uint8 [h, w, 3], box; paste_canvases -> [n, canvas, canvas, 3]
  resize_center_crop(im, size)      -> uint8 [size, size, 3]   (evaluation, inference)
  normalize(uint8 images, preset)   -> float32                  (NORMALIZATIONS)

JPEGs are decoded with PIL's draft mode: the DCT is scaled down to the smallest power-of-two
reduction that still leaves the needed region at least `size` pixels, which decodes a large
photo several times faster and changes nothing a bicubic downscale would not.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
import math
import warnings

import numpy as np
from PIL import Image

# name -> (mean, std) per RGB channel, applied to pixels scaled to [0, 1].
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),  # OpenAI CLIP
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # big_vision / Inception: pixels to [-1, 1]
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
NORMALIZATIONS["inception"] = NORMALIZATIONS["siglip"]
DEFAULT_CROP_SCALE = (0.08, 1.0)
DEFAULT_CROP_RATIO = (3 / 4, 4 / 3)
# Batch field beside the uint8 canvases of data.resize="device": float32 [..., 4], each crop's box
# (top, left, bottom, right) in its canvas's pixels (vljax/data/device_resize.py).
BOX_KEY = "image_box"
MAX_PIXELS = 178_956_970  # PIL's decompression-bomb limit; larger images are treated as corrupt


# data.jpeg_decoder: PIL, or libjpeg-turbo through simplejpeg (pip install simplejpeg): the same
# pixels at full scale, less overhead, and reduced-scale decodes in eighths rather than halves.
JPEG_DECODERS = ("pil", "simplejpeg")


class CorruptImageError(ValueError):
  """The bytes are not a decodable image (truncated, garbage, unsupported, too large)."""


def check_jpeg_decoder(name: str) -> None:
  if name not in JPEG_DECODERS:
    raise ValueError(f"Unknown data.jpeg_decoder {name!r}; valid: {list(JPEG_DECODERS)}")
  if name == "simplejpeg":
    try:
      import simplejpeg  # noqa: F401
    except ImportError as e:
      raise ValueError("data.jpeg_decoder='simplejpeg' needs the simplejpeg package: pip install simplejpeg") from e


class JpegBytes:
  """A JPEG for simplejpeg: its size from the header, pixels decoded only for a crop (region())."""
  format = "JPEG"

  def __init__(self, data: bytes):
    import simplejpeg
    self.data = data
    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    self.size = (width, height)

  def region(self, box: tuple[float, ...], size: int) -> tuple[Image.Image, tuple[float, ...]]:
    """(RGB image at the smallest scale whose `box` is still >= size on both sides, box in it)."""
    import simplejpeg
    (full_w, full_h), crop_w, crop_h = self.size, box[2] - box[0], box[3] - box[1]
    try:
      pixels = simplejpeg.decode_jpeg(self.data, "RGB", min_width=math.ceil(full_w * size / crop_w),
                                      min_height=math.ceil(full_h * size / crop_h))
    except ValueError:  # what libjpeg-turbo cannot convert (CMYK, ...): PIL's decoder, as without simplejpeg
      return _decoded_region(decode_image(self.data), box, size)
    sx, sy = pixels.shape[1] / full_w, pixels.shape[0] / full_h
    return Image.fromarray(pixels), (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def check_normalization(name: str) -> None:
  if name not in NORMALIZATIONS:
    raise ValueError(f"Unknown normalization preset {name!r}; valid: {sorted(NORMALIZATIONS)}")


def decode_image(data: bytes, jpeg_decoder: str = "pil") -> Image.Image | JpegBytes:
  """Encoded JPEG/PNG/WebP/... bytes -> a lazily decoded PIL image (RGB is applied by the crops), or
  with jpeg_decoder="simplejpeg" a JPEG's JpegBytes."""
  if not data:
    raise CorruptImageError("empty image bytes")
  if jpeg_decoder == "simplejpeg" and data[:2] == b"\xff\xd8":
    try:
      im = JpegBytes(data)
    except ValueError as e:
      raise CorruptImageError(f"undecodable image: {e}") from e
    if im.size[0] * im.size[1] > MAX_PIXELS:
      raise CorruptImageError(f"image of {im.size[0]}x{im.size[1]} pixels is over the {MAX_PIXELS} limit")
    return im
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      im = Image.open(io.BytesIO(data))
      if im.width * im.height > MAX_PIXELS:
        raise CorruptImageError(f"image of {im.width}x{im.height} pixels is over the {MAX_PIXELS} limit")
    return im
  except CorruptImageError:
    raise
  except Exception as e:  # PIL raises many types on malformed input (struct.error, IndexError, ...)
    raise CorruptImageError(f"undecodable image: {type(e).__name__}: {e}") from e


def _decoded_region(im: Image.Image, box: tuple[int, int, int, int], size: int):
  """(RGB image decoded at the smallest JPEG scale whose `box` is still >= size on both sides, the
  box in its coordinates). `box` is in full-resolution coordinates."""
  full_w, full_h = im.size
  if min(full_w, full_h) < 1:
    raise CorruptImageError(f"image of {full_w}x{full_h} pixels has no content")
  if isinstance(im, JpegBytes):
    return im.region(box, size)
  crop_w, crop_h = box[2] - box[0], box[3] - box[1]
  if im.format == "JPEG":
    im.draft("RGB", (math.ceil(full_w * size / crop_w), math.ceil(full_h * size / crop_h)))
  sx, sy = im.size[0] / full_w, im.size[1] / full_h
  box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
  if im.mode != "RGB":
    im = im.convert("RGBA").convert("RGB") if im.mode in ("P", "LA", "PA") else im.convert("RGB")
  return im, box


def _to_rgb_array(im: Image.Image, box: tuple[int, int, int, int], size: int) -> np.ndarray:
  """Crop `box` (in full-resolution coordinates) out of `im`, resize to size x size, RGB uint8."""
  try:
    im, box = _decoded_region(im, box, size)
    return np.asarray(im.resize((size, size), Image.BICUBIC, box=box, reducing_gap=None), dtype=np.uint8)
  except CorruptImageError:
    raise
  except Exception as e:  # truncated or malformed data surfaces only when pixels load, as any type
    raise CorruptImageError(f"undecodable image: {type(e).__name__}: {e}") from e


def crop_for_device(im: Image.Image | np.ndarray, box: tuple[int, int, int, int], size: int,
                    canvas: int) -> tuple[np.ndarray, np.ndarray]:
  """The pixels under `box` for a `size` crop resized on the device (vljax/data/device_resize.py):
  decoded at the JPEG scale that keeps the box >= size, the whole pixels it touches, shrunk
  (bicubic) only when larger than `canvas` on a side.
  -> (uint8 [h, w, 3] with h, w <= canvas, float32 [4]: the box (top, left, bottom, right) in them)."""
  if isinstance(im, np.ndarray):
    im = Image.fromarray(im)
  try:
    im, (x0, y0, x1, y1) = _decoded_region(im, box, size)
    left, top = math.floor(x0), math.floor(y0)
    region = im.crop((left, top, max(left + 1, math.ceil(x1)), max(top + 1, math.ceil(y1))))
    sx = sy = 1.0
    if max(region.size) > canvas:
      fit = canvas / max(region.size)
      width, height = max(1, round(region.width * fit)), max(1, round(region.height * fit))
      sx, sy = width / region.width, height / region.height
      region = region.resize((width, height), Image.BICUBIC, reducing_gap=3.0)
    pixels = np.asarray(region, dtype=np.uint8)
  except CorruptImageError:
    raise
  except Exception as e:
    raise CorruptImageError(f"undecodable image: {type(e).__name__}: {e}") from e
  return pixels, np.array([(y0 - top) * sy, (x0 - left) * sx, (y1 - top) * sy, (x1 - left) * sx], np.float32)


def paste_canvases(regions: Sequence[np.ndarray], canvas: int, out: np.ndarray | None = None) -> np.ndarray:
  """crop_for_device's regions at the top left of zero canvases: uint8 [n, canvas, canvas, 3] (into
  `out` when given, which must hold zeros: new shared memory does, and pages never written are never
  faulted in). One batch-sized buffer: a canvas per example would be allocated, zeroed and copied
  once more."""
  if out is None:
    out = np.zeros((len(regions), canvas, canvas, 3), np.uint8)
  for dst, region in zip(out, regions):
    dst[:region.shape[0], :region.shape[1]] = region
  return out


def center_box(width: int, height: int) -> tuple[int, int, int, int]:
  """The central square of a width x height image."""
  side = min(width, height)
  left, top = (width - side) // 2, (height - side) // 2
  return left, top, left + side, top + side


def resize_center_crop(im: Image.Image | np.ndarray, size: int) -> np.ndarray:
  """Shorter side to `size` (bicubic), then the central size x size square: uint8 [size, size, 3]."""
  if isinstance(im, np.ndarray):
    im = Image.fromarray(im)
  return _to_rgb_array(im, center_box(*im.size), size)


def random_crop_box(width: int, height: int, rng: np.random.Generator,
                    scale: tuple[float, float] = DEFAULT_CROP_SCALE,
                    ratio: tuple[float, float] = DEFAULT_CROP_RATIO) -> tuple[int, int, int, int]:
  """Inception-style crop box: a random area fraction in `scale` and aspect ratio in `ratio`.

  The same sampling as torchvision's RandomResizedCrop: ten tries, then the central crop of the
  nearest allowed aspect ratio.
  """
  if not 0 < scale[0] <= scale[1] <= 1:
    raise ValueError(f"crop scale {scale} must satisfy 0 < low <= high <= 1")
  w, h = width, height
  area = w * h
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
    if 0 < cw <= w and 0 < ch <= h:
      left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
      return left, top, left + cw, top + ch
  aspect = w / h
  if aspect < ratio[0]:
    cw, ch = w, round(w / ratio[0])
  elif aspect > ratio[1]:
    cw, ch = round(h * ratio[1]), h
  else:
    cw, ch = w, h
  left, top = (w - cw) // 2, (h - ch) // 2
  return left, top, left + cw, top + ch


def random_resized_crop(im: Image.Image | np.ndarray, size: int, rng: np.random.Generator,
                        scale: tuple[float, float] = DEFAULT_CROP_SCALE,
                        ratio: tuple[float, float] = DEFAULT_CROP_RATIO) -> np.ndarray:
  """random_crop_box, resized to size x size (bicubic): uint8 [size, size, 3]."""
  if isinstance(im, np.ndarray):
    im = Image.fromarray(im)
  return _to_rgb_array(im, random_crop_box(*im.size, rng, scale, ratio), size)


def normalize(images: np.ndarray, preset: str = "siglip", out: np.ndarray | None = None) -> np.ndarray:
  """uint8 [..., 3] -> float32 (x / 255 - mean) / std with the preset's per-channel statistics (into
  `out` when given: float32 of the images' shape)."""
  check_normalization(preset)
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(f"normalize expects uint8 pixels, got dtype {images.dtype}.")
  if images.ndim == 0 or images.shape[-1] != 3:
    raise ValueError(f"normalize expects RGB pixels [..., 3], got shape {images.shape}.")
  table = _normalization_table(preset)
  out = np.empty(images.shape, np.float32) if out is None else out
  pixels, normalized = images.reshape(-1, 3), out.reshape(-1, 3)
  for channel in range(3):  # a lookup per channel: the same values as the arithmetic, faster than it
    normalized[:, channel] = table[:, channel][pixels[:, channel]]  # 1.6x np.take into a strided out
  return out


@functools.cache
def _normalization_table(preset: str) -> np.ndarray:
  """float32 [256, 3]: (v / 255 - mean) / std for every uint8 value v and channel."""
  mean, std = (np.asarray(v, np.float32) for v in NORMALIZATIONS[preset])
  values = np.arange(256, dtype=np.float32)[:, None]
  return (values * np.float32(1 / 255) - mean) / std
