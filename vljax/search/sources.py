"""What `index` embeds: a folder of image files, or N scenes of the shapes world (`shapes:N`).

A source lists its items once, at start, in a fixed order (a folder's files sorted by path), and
reads any item by its position: the index job cuts the list into shards, and a resumed job reads
a shard exactly as the first one would have. Items are read at the run's image size (resize the
shorter side, center crop), as its evaluation reads them.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import ml_collections
import numpy as np

from vljax.data import images as images_lib
from vljax.data import pipeline, shapes
from vljax.inference import images as images_read

SHAPES_PREFIX = "shapes:"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SHAPES_SPLIT = "eval"  # the held-out scenes: what the run was evaluated on, not trained on


def read_file(path: str, image_size: int, jpeg_decoder: str = "pil") -> np.ndarray:
  """uint8 [size, size, 3] of an image file, as the index reads it (a query image too: the same
  pixels give the same embedding); CorruptImageError for bytes that do not decode."""
  with open(path, "rb") as f:
    data = f.read()
  return images_lib.resize_center_crop(images_lib.decode_image(data, jpeg_decoder), image_size)


class FolderImages:
  """The image files under a directory (recursively, by suffix); ids are their absolute paths."""

  def __init__(self, path: str, image_size: int, jpeg_decoder: str = "pil"):
    if not os.path.isdir(path):
      what = "is a file, not a directory" if os.path.exists(path) else "does not exist"
      raise FileNotFoundError(f"--images {path!r} {what}; valid: a directory of image files "
                              f"({', '.join(IMAGE_SUFFIXES)}) or {SHAPES_PREFIX}N")
    root = os.path.abspath(path)
    self.ids = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                      if f.lower().endswith(IMAGE_SUFFIXES))
    if not self.ids:
      raise ValueError(f"--images {path!r} holds no image files; valid suffixes: {', '.join(IMAGE_SUFFIXES)}")
    self.spec, self.image_size, self.jpeg_decoder = root, image_size, jpeg_decoder
    self.description = f"{len(self.ids)} image files under {root}"

  def __len__(self) -> int:
    return len(self.ids)

  def read(self, i: int) -> np.ndarray:
    """uint8 [size, size, 3]; CorruptImageError for bytes that do not decode, FileNotFoundError for a
    file removed since the listing."""
    return read_file(self.ids[i], self.image_size, self.jpeg_decoder)


class ShapesImages:
  """Scenes 0..N-1 of the run's shapes world (its data.world_seed), held-out split; ids "shapes:i"."""

  def __init__(self, count: int, data_cfg: ml_collections.ConfigDict):
    self.world = world_of(data_cfg)
    self.ids = [f"{SHAPES_PREFIX}{i}" for i in range(count)]
    self.spec = f"{SHAPES_PREFIX}{count}"
    self.image_size = self.world.image_size
    self.description = (f"{count} shapes scenes (world seed {self.world.seed}, {SHAPES_SPLIT} split, "
                        f"{self.world.image_size} px)")

  def __len__(self) -> int:
    return len(self.ids)

  def read(self, i: int) -> np.ndarray:
    return self.world.example(i, SHAPES_SPLIT)["image"]


def world_of(data_cfg: ml_collections.ConfigDict) -> shapes.ShapesWorld:
  """The run's own world when it trained on shapes, else the default world at its image size."""
  if data_cfg.get("name", "shapes") == "shapes":
    return pipeline.make_world(data_cfg)
  return shapes.ShapesWorld(image_size=data_cfg.image_size)


def open_images(spec: str, data_cfg: ml_collections.ConfigDict) -> FolderImages | ShapesImages:
  """`--images`: a directory, or shapes:N (N >= 1)."""
  if spec.startswith(SHAPES_PREFIX):
    count = spec[len(SHAPES_PREFIX):]
    if not count.isdigit() or int(count) < 1:
      raise ValueError(f"--images {spec!r}: the shapes source is {SHAPES_PREFIX}N with N >= 1 scenes")
    return ShapesImages(int(count), data_cfg)
  return FolderImages(spec, int(data_cfg.image_size), data_cfg.get("jpeg_decoder", "pil"))


def image_reader(data_cfg: ml_collections.ConfigDict) -> Callable[[str], np.ndarray]:
  """id -> uint8 [H, W, 3], the indexed image as its source holds it (a file, or the scene rendered
  again): what the contact sheet shows."""
  world = []  # made at the first scene: its textures cost more than reading a file

  def read(item_id: str) -> np.ndarray:
    if not item_id.startswith(SHAPES_PREFIX):
      return images_read.read_image(item_id)
    world[:] = world or [world_of(data_cfg)]
    return world[0].example(int(item_id[len(SHAPES_PREFIX):]), SHAPES_SPLIT)["image"]
  return read
