"""Images for inference: file paths or uint8 arrays, resized to the size a model was trained at."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from vljax.data import images as images_lib

ImageInput = str | os.PathLike | np.ndarray | Sequence[Any]


def read_image(path: str | os.PathLike) -> np.ndarray:
  """uint8 [H, W, 3] from an image file; a missing or undecodable file names itself."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"image file {path!r} does not exist")
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert("RGB"))
  except (OSError, ValueError) as e:  # PIL raises UnidentifiedImageError (an OSError) on garbage
    raise ValueError(f"cannot decode image file {path!r}: {e}") from e


def load_images(images: ImageInput, size: int) -> np.ndarray:
  """Paths / arrays -> uint8 [N, size, size, 3]."""
  if isinstance(images, (str, os.PathLike)):
    images = [images]
  elif isinstance(images, np.ndarray) and images.ndim == 3:
    images = [images]
  out = []
  for i, item in enumerate(images):
    array = read_image(item) if isinstance(item, (str, os.PathLike)) else np.asarray(item)
    if array.ndim == 2:
      array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
      raise ValueError(f"image {i}: expected a file path or a uint8 array [H, W, 3], got "
                       f"dtype {array.dtype} shape {array.shape}")
    out.append(array if array.shape[:2] == (size, size) else images_lib.resize_center_crop(array, size))
  if not out:
    raise ValueError("no images given")
  return np.stack(out)
