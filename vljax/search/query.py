"""A query of an index: a text (or an image) embedded by the index's own run at the index's checkpoint
step, every indexed image scored by exact search, the hits printed and drawn on a contact sheet."""

from __future__ import annotations

import os

import numpy as np

from vljax.data import images as images_lib
from vljax.search import exact, model as model_lib, sheet as sheet_lib, sources, store


def default_sheet(index: str) -> str:
  """Next to the index, not in it: OUT.sheet.png."""
  return os.path.normpath(index) + ".sheet.png"


class Searcher:
  """An index and its run, loaded once: queries after the first reuse the compiled encoders."""

  def __init__(self, index: str):
    self.index = index
    self.manifest, self.embeddings, self.ids = store.open_index(index)
    self.run = model_lib.open_run(self.manifest["workdir"], self.manifest["step"])
    self.embedder = model_lib.Embedder(self.run, batch_size=1)  # queries go through the predictor's chunk

  def embed(self, text: str | None = None, image: str | None = None) -> np.ndarray:
    """float32 [E]: the query text's embedding, or the image file's (read as the index reads files)."""
    if (text is None) == (image is None):
      raise ValueError("a query is a text or an --image file, exactly one of them; got "
                       f"{'both' if text is not None else 'neither'}")
    if text is not None:
      if not text.strip():
        raise ValueError(f"the query text {text!r} is empty")
      return self.embedder.text(text)
    if self.manifest.get("queries_per_image"):
      raise ValueError(f"--image: the index's model gives {self.manifest['queries_per_image']} embeddings per image "
                       "(query form, BLIP-2's Q-Former), which are scored against a text only; query it with a text")
    if not os.path.isfile(image):
      raise FileNotFoundError(f"--image {image!r} does not exist")
    try:
      pixels = sources.read_file(image, int(self.run.cfg.data.image_size), self.run.cfg.data.get("jpeg_decoder", "pil"))
    except images_lib.CorruptImageError as e:
      raise ValueError(f"--image {image!r} is not a readable image: {e}") from e
    return self.embedder.images(pixels[None], batch=False)[0]

  def search(self, query: np.ndarray, k: int, chunk_rows: int = exact.CHUNK_ROWS) -> list[exact.Hit]:
    rows, scores = exact.search(self.embeddings, query, k, chunk_rows)
    return exact.hits(rows, scores, self.ids)

  def write_sheet(self, hits: list[exact.Hit], path: str) -> tuple[int, int]:
    return sheet_lib.write_sheet(hits, sources.image_reader(self.run.cfg.data), path)


def run(index: str, text: str | None = None, image: str | None = None, k: int = 10, sheet: str | None = None,
        chunk_rows: int = exact.CHUNK_ROWS) -> tuple[list[exact.Hit], str]:
  """(the hits, the contact sheet's path)."""
  exact.check_k(k)  # before the model loads
  searcher = Searcher(index)
  found = searcher.search(searcher.embed(text, image), k, chunk_rows)
  path = sheet or default_sheet(index)
  searcher.write_sheet(found, path)
  return found, path
