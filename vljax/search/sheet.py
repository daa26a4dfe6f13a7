"""A contact sheet of search hits: a grid of thumbnails, each captioned with its rank and score."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from vljax.search.exact import Hit

THUMB = 128  # pixels, the longer side of a thumbnail
CAPTION = 16  # pixels under each thumbnail
COLUMNS = 5
MARGIN = 4
BACKGROUND = (255, 255, 255)
MISSING = (200, 200, 200)  # the cell of an image that can no longer be read


def grid_size(count: int, columns: int = COLUMNS, thumb: int = THUMB) -> tuple[int, int]:
  """(width, height) in pixels of a sheet of `count` hits."""
  cols = min(columns, count)
  rows = math.ceil(count / cols)
  return cols * (thumb + MARGIN) + MARGIN, rows * (thumb + CAPTION + MARGIN) + MARGIN


def _thumbnail(read: Callable[[str], np.ndarray], item_id: str, thumb: int) -> Image.Image:
  """The image fitted into thumb x thumb (aspect kept, centred), or a grey square if it is gone."""
  cell = Image.new("RGB", (thumb, thumb), MISSING)
  try:
    im = Image.fromarray(read(item_id))
  except (OSError, ValueError):  # moved, deleted or corrupted since it was indexed
    return cell
  scale = thumb / max(im.size)  # small images (a 64 px scene) are enlarged to fill the cell, pixels kept sharp
  im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                 Image.NEAREST if scale >= 1 else Image.BILINEAR)
  cell.paste(im, ((thumb - im.width) // 2, (thumb - im.height) // 2))
  return cell


def write_sheet(hits: Sequence[Hit], read: Callable[[str], np.ndarray], path: str, columns: int = COLUMNS,
                thumb: int = THUMB) -> tuple[int, int]:
  """Writes the PNG atomically; returns its (width, height)."""
  if not hits:
    raise ValueError("no hits to draw")
  size = grid_size(len(hits), columns, thumb)
  sheet = Image.new("RGB", size, BACKGROUND)
  draw = ImageDraw.Draw(sheet)
  cols = min(columns, len(hits))
  for i, hit in enumerate(hits):
    x = MARGIN + (i % cols) * (thumb + MARGIN)
    y = MARGIN + (i // cols) * (thumb + CAPTION + MARGIN)
    sheet.paste(_thumbnail(read, hit.id, thumb), (x, y))
    draw.text((x + 2, y + thumb + 2), f"#{hit.rank}  {hit.score:.3f}", fill=(0, 0, 0))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  sheet.save(tmp, format="PNG")
  os.replace(tmp, path)
  return size
