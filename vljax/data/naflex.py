"""NaFlex host preprocessing (SigLIP 2): native aspect ratio under a token budget.

  uint8 [H, W, 3] -> grid_for: the h x w patch grid of H:W's aspect with h * w <= max_patches
  -> resize to h*P x w*P (bicubic) -> normalise -> pack: float32 [max_patches, P*P + 1, 3]

A packed row holds one patch's pixels in raster order, then the "pixel" (row, col, valid); rows past
h * w are padding (valid 0), which the tower (vljax/models/naflex.py) masks out. Every example costs
max_patches tokens whatever its aspect: a batch's token budget is batch_size * max_patches.

data.naflex = dict(max_patches=N, patch=P, aspect=None | (lo, hi)). The shapes world renders squares;
aspect=(lo, hi) gives each example its own aspect ratio (width / height, log-uniform in [lo, hi],
drawn from (world seed, index)) by stretching its render, so captions stay true and training and
evaluation see mixed aspect ratios. Real sources: a training example is its random crop at the crop's
own aspect (the pipeline's crop-region path, source_canvas), an evaluation one its center square;
undecodable images are skipped and counted upstream, as without NaFlex.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from vljax.data import images

NAFLEX_KEYS = ("max_patches", "patch", "aspect")
NAFLEX_FORMATS = ("caption", "hard_negatives")  # one image per example, collated by formats.image_fields
ASPECT_KEY = "naflex_aspect"  # an example's drawn aspect ratio (width / height), beside its image
_ASPECT_STREAM = 1_000  # rng stream of the drawn aspect ratios; + the split's stream id
EVAL_STREAM = 1  # evaluators' draws (training: 0)


def min_patches(aspect: float) -> int:
  """Fewest patches of an image of this aspect ratio (width / height) that keep it: 1 x ceil(ratio)."""
  return math.ceil(max(aspect, 1.0 / aspect) - 1e-9)


def settings(data_cfg: Mapping[str, Any]) -> dict[str, Any] | None:
  """data.naflex checked -> dict(max_patches, patch, aspect), or None when off."""
  given = data_cfg.get("naflex", None)
  if not given:
    return None
  if not hasattr(given, "items"):
    raise ValueError(f"data.naflex={given!r} is invalid; valid: dict(max_patches=N, patch=P[, aspect=(lo, hi)])")
  given = dict(given)
  unknown = sorted(set(given) - set(NAFLEX_KEYS))
  if unknown:
    raise ValueError(f"data.naflex: unknown key(s) {unknown}; valid: {list(NAFLEX_KEYS)}")
  patch, budget, aspect = given.get("patch"), given.get("max_patches"), given.get("aspect")
  if not isinstance(patch, int) or isinstance(patch, bool) or patch < 2:
    raise ValueError(f"data.naflex.patch={patch!r} is invalid; valid: the image tower's patch size, an integer >= 2")
  if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
    raise ValueError(f"data.naflex.max_patches={budget!r} is invalid; valid: an integer >= 1 (the token budget of "
                     "one image; its minimum is 1 patch per side)")
  if aspect is not None:
    aspect = tuple(aspect)
    if len(aspect) != 2 or not 0 < aspect[0] <= aspect[1] or not all(map(math.isfinite, aspect)):
      raise ValueError(f"data.naflex.aspect={given.get('aspect')!r} is invalid; valid: None (the images' own) or "
                       "(lo, hi) with 0 < lo <= hi, width / height")
    need = max(min_patches(a) for a in aspect)
    if budget < need:
      raise ValueError(f"data.naflex.max_patches={budget} is smaller than the minimum of an image of aspect "
                       f"{max(aspect[1], 1 / aspect[0]):.3g} (data.naflex.aspect={aspect}): 1 x {need} patches; "
                       f"valid: max_patches >= {need}")
  return dict(max_patches=budget, patch=patch, aspect=aspect)


def check_data(data_cfg: Mapping[str, Any]) -> dict[str, Any] | None:
  """settings() plus what the rest of the data config must be for NaFlex."""
  cfg = settings(data_cfg)
  if cfg is None:
    return None
  if data_cfg.get("name", "shapes") != "shapes" and cfg["aspect"] is not None:
    raise ValueError(f"data.naflex.aspect={cfg['aspect']} stretches the shapes world's square renders; "
                     f"data.name={data_cfg.get('name')!r} keeps its images' own aspect: valid: aspect=None")
  if data_cfg.get("format", "caption") not in NAFLEX_FORMATS:
    raise ValueError(f"data.naflex supports data.format in {list(NAFLEX_FORMATS)}, not {data_cfg.get('format')!r}")
  if data_cfg.get("resize", "host") != "host":
    raise ValueError(f"data.naflex resizes on the host: data.resize={data_cfg.get('resize')!r} is invalid; "
                     "valid: 'host'")
  return cfg


def grid_for(height: float, width: float, patch: int, max_patches: int) -> tuple[int, int]:
  """(h, w) patches: the largest grid of the image's aspect with h * w <= max_patches (up- or downscaling),
  each side >= 1; an aspect beyond 1 x max_patches is squeezed into it."""
  if patch < 1 or max_patches < 1:
    raise ValueError(f"grid_for: patch={patch} and max_patches={max_patches} must be >= 1")
  if not (height > 0 and width > 0):
    raise images.CorruptImageError(f"image of {width}x{height} pixels has no content")
  h0, w0 = height / patch, width / patch
  scale = math.sqrt(max_patches / (h0 * w0))
  h = min(max(1, math.floor(h0 * scale + 1e-6)), max_patches)
  w = min(max(1, math.floor(w0 * scale + 1e-6)), max_patches // h)
  # Floors can leave a row or column unused: grow the side whose growth keeps the aspect best.
  for dh, dw in sorted(((1, 0), (0, 1)), key=lambda d: abs(math.log((h + d[0]) / (w + d[1]) * w0 / h0))):
    if (h + dh) * (w + dw) <= max_patches and abs(math.log((h + dh) / (w + dw) * w0 / h0)) <= abs(
        math.log(h / w * w0 / h0)):
      h, w = h + dh, w + dw
      break
  return h, w


def resize_to_grid(pixels: np.ndarray, grid: tuple[int, int], patch: int,
                   box: Sequence[float] | None = None) -> np.ndarray:
  """uint8 [H, W, 3] (its `box` (top, left, bottom, right) of it) -> uint8 [h*P, w*P, 3] (bicubic; as is
  when already that size)."""
  h, w = grid
  if box is None and pixels.shape[:2] == (h * patch, w * patch):
    return pixels
  pil_box = None if box is None else (box[1], box[0], box[3], box[2])
  return np.asarray(Image.fromarray(pixels).resize((w * patch, h * patch), Image.BICUBIC, box=pil_box), np.uint8)


def check_pixels(pixels: Any) -> np.ndarray:
  pixels = np.asarray(pixels)
  if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[-1] != 3 or min(pixels.shape[:2]) < 1:
    raise images.CorruptImageError(f"NaFlex expects uint8 pixels [H, W, 3] with H, W >= 1, got dtype "
                                   f"{pixels.dtype} shape {pixels.shape}")
  return pixels


def pack(pixels: np.ndarray, patch: int, max_patches: int, normalization: str = "siglip",
         aspect: float | None = None, out: np.ndarray | None = None, box: Sequence[float] | None = None
         ) -> np.ndarray:
  """uint8 [H, W, 3] (or its `box`, (top, left, bottom, right) in pixels) -> float32 [max_patches, P*P + 1, 3]
  (module docstring). aspect (width / height): the image is taken to have it (stretched), not its own."""
  pixels = check_pixels(pixels)
  height, width = pixels.shape[:2]
  if box is not None:
    height, width = box[2] - box[0], box[3] - box[1]
  if aspect is not None:  # same area, the given width / height
    side = math.sqrt(height * width)
    height, width = side / math.sqrt(aspect), side * math.sqrt(aspect)
  h, w = grid_for(height, width, patch, max_patches)
  resized = resize_to_grid(pixels, (h, w), patch, box)
  patches = resized.reshape(h, patch, w, patch, 3).transpose(0, 2, 1, 3, 4).reshape(h * w, patch * patch, 3)
  out = np.zeros((max_patches, patch * patch + 1, 3), np.float32) if out is None else out
  out[:h * w, :patch * patch] = images.normalize(patches, normalization)
  rows, cols = np.divmod(np.arange(h * w), w)
  out[:h * w, patch * patch] = np.stack([rows, cols, np.ones(h * w)], axis=-1)
  return out


def pack_batch(pixels: Sequence[np.ndarray], cfg: Mapping[str, Any], normalization: str = "siglip",
               aspects: Sequence[float | None] | None = None,
               boxes: Sequence[Sequence[float] | None] | None = None) -> np.ndarray:
  """Images of any sizes -> float32 [n, max_patches, P*P + 1, 3]."""
  p, n = cfg["patch"], cfg["max_patches"]
  out = np.zeros((len(pixels), n, p * p + 1, 3), np.float32)
  for i, image in enumerate(pixels):
    pack(image, p, n, normalization, None if aspects is None else aspects[i], out=out[i],
         box=None if boxes is None else boxes[i])
  return out


def source_canvas(data_cfg: Mapping[str, Any], train: bool) -> int:
  """The crop-region bound (images.crop_for_device's canvas) under which a real source's training crops
  keep their own aspect: twice the longest side a grid of the budget can have at aspect <= 4/3; 0: off."""
  cfg = settings(data_cfg)
  if cfg is None or not train:
    return 0
  return 2 * cfg["patch"] * math.isqrt(cfg["max_patches"] * 2)


def wrap_collate(collate: Callable[[Sequence[dict]], dict], data_cfg: Mapping[str, Any]) -> Callable:
  """`collate` packing images the NaFlex way under data.naflex, else itself."""
  cfg = settings(data_cfg)
  return collate if cfg is None else NaflexCollate(collate, cfg, data_cfg.get("normalization", "siglip"))


def draw_aspect(seed: int, stream: int, index: int, aspect: tuple[float, float]) -> float:
  """Example `index`'s aspect ratio (width / height), log-uniform in `aspect`, from (seed, stream, index)."""
  lo, hi = aspect
  u = np.random.default_rng([int(seed), _ASPECT_STREAM + int(stream), int(index)]).random()
  return float(math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))))


def valid_fraction(batch_image: np.ndarray, patch: int) -> float:
  """Share of a packed batch's token budget holding real patches (1 - padding)."""
  return float(np.mean(batch_image[:, :, patch * patch, 2] > 0.5))


class AspectSource:
  """A ShapesSource whose examples also carry ASPECT_KEY, drawn from the source's own index."""

  def __init__(self, source, aspect: tuple[float, float], stream: int = 0):
    self.source, self.aspect, self.stream = source, tuple(aspect), stream

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    ex = dict(self.source[index])
    ex[ASPECT_KEY] = draw_aspect(self.source.world.seed, self.stream, self.source.start + int(index), self.aspect)
    return ex

  def __repr__(self) -> str:
    return f"AspectSource({self.source!r}, aspect={self.aspect})"


_STUB = np.zeros((1, 1, 3), np.uint8)  # what the inner collate normalises in place of each image


class NaflexCollate:
  """A format's collate with its "image" replaced by the packed NaFlex images (module docstring)."""

  def __init__(self, collate: Callable[[Sequence[dict]], dict], cfg: Mapping[str, Any], normalization: str):
    self.collate, self.cfg, self.normalization = collate, dict(cfg), normalization

  def __call__(self, examples: Sequence[dict]) -> dict[str, np.ndarray]:
    # A real source's training example holds its crop's box in its pixels (source_canvas).
    packed = pack_batch([ex["image"] for ex in examples], self.cfg, self.normalization,
                        [ex.get(ASPECT_KEY) for ex in examples], [ex.get(images.BOX_KEY) for ex in examples])
    for ex in examples:
      ex.pop(images.BOX_KEY, None)
      ex["image"] = _STUB
    batch = self.collate(examples)
    batch["image"] = packed
    return batch


def eval_images(examples: Sequence[dict], normalization: str, cfg: Mapping[str, Any], seed: int) -> np.ndarray:
  """Evaluators' images packed as in training; with data.naflex.aspect, example i stretched to its draw."""
  aspects = None
  if cfg.get("aspect"):
    aspects = [draw_aspect(seed, EVAL_STREAM, i, cfg["aspect"]) for i in range(len(examples))]
  return pack_batch([e["image"] for e in examples], cfg, normalization, aspects)
