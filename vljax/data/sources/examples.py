"""Raw record -> training example: pick a caption, decode and crop the image (in grain workers).

Every source yields raw records `{"image": encoded bytes, "caption": text | [texts] | bytes,
"key": str}` (or a skip marker, see skips.py); the folder and array_record sources also
`{"image", "question", "answer", "key"}` and documents `{"chunks": [...], "key"}` (fields.py).
`Preprocess` runs as a grain `random_map`, so its generator is derived from (seed, example index)
by grain: the same example gets the same crop and caption in every run and after every resume.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from vljax.data import boxes, conversations, images, prompts
from vljax.data.sources import skips


def pick_caption(caption, rng: np.random.Generator | None) -> str:
  """One caption text: `rng` picks among several (None: the first); '' when there is none."""
  if isinstance(caption, (list, tuple, np.ndarray)):
    texts = [t for t in (_text(c) for c in caption) if t]
    if not texts:
      return ""
    return texts[int(rng.integers(len(texts)))] if rng is not None else texts[0]
  return _text(caption)


def _text(value) -> str:
  if value is None:
    return ""
  if isinstance(value, bytes):
    value = value.decode("utf-8", errors="replace")
  return str(value).strip()


def question_answer(record: dict, rng: np.random.Generator | None) -> tuple[str, str] | None:
  """(question, answer) texts, an answer picked among several; None when either is missing or not text."""
  question, answer = record.get("question"), record.get("answer")
  answers = answer if isinstance(answer, (list, tuple)) else [answer]
  if not isinstance(question, (str, bytes)) or not all(isinstance(a, (str, bytes)) for a in answers):
    return None
  question, answer = _text(question), pick_caption(answer, rng)
  return (question, answer) if question and answer else None


class Preprocess:
  """random_map transform: raw record -> example or a skip marker.

  Examples: {"image": uint8 [S, S, 3], "caption": str} or {"image", "question", "answer"}; without
  `decode_images` (text-only formats) no "image". A document -> {"windows": [[example] * chunks, ...]}:
  its chunks cut into consecutive sequences of `chunks`, the rest dropped.
  train: random resized crop in `crop_scale`, a random caption (answer); eval: resize + center crop
  and the first. `canvas` > 0 (training with data.resize="device"): the crop's pixels (at most
  `canvas` on a side) and its box in them (images.BOX_KEY), resized on the device. `jpeg_decoder`: images.JPEG_DECODERS.
  `source` tags the output so mixtures count bad samples per source.
  `boxes` (formats that read boxes): caption examples also hold "objects" (the record's boxes moved
  with the crop, vljax/data/boxes.py; a bad one skips the record as bad_box) and a "seed".
  `chunk_tokens` (chunked formats: example -> (ids, targets) or None, the format's own) tokenizes
  each example as the collate will, into its prompts.TOKENS field, so that what cannot make a row
  of `max_len` tokens is skipped here rather than failing the batch: an example whose text holds a
  chunk marker (special_token_in_text) or too long for any sequence (too_long); in a document,
  the window holding such a chunk, or a window too long as a whole, becomes that reason instead.
  """

  def __init__(self, image_size: int, train: bool, crop_scale: Sequence[float], source: int = 0,
               decode_images: bool = True, chunks: int = 1,
               chunk_tokens: Callable[[dict], tuple | None] | None = None, max_len: int = 0, canvas: int = 0,
               jpeg_decoder: str = "pil", boxes: bool = False):
    self.image_size, self.train, self.source, self.canvas = int(image_size), train, source, int(canvas)
    self.jpeg_decoder = jpeg_decoder
    self.crop_scale = tuple(float(s) for s in crop_scale)
    self.decode_images, self.chunks = decode_images, int(chunks)
    self.chunk_tokens, self.max_len = chunk_tokens, int(max_len)
    self.boxes = boxes

  def __call__(self, record: dict, rng: np.random.Generator) -> dict:
    extra = {"shard_end": True} if record.get("shard_end") else {}
    if skips.is_marker(record):
      return skips.marker(record["skip"], self.source, **extra)
    if "chunks" in record:
      out = self._document(record["chunks"], rng)
    else:
      out = self._example(record, rng)
    if isinstance(out, str):
      return skips.marker(out, self.source, **extra)
    return {**out, "source": self.source, **extra}

  def _document(self, chunks: list[dict], rng: np.random.Generator) -> dict | str:
    """{"windows": sequences of `self.chunks` examples, or the skip reason of a window that cannot
    make a row}, or the skip reason of its first bad chunk."""
    usable = len(chunks) // self.chunks * self.chunks
    if not usable:
      return "short_document"
    out = []
    for record in chunks[:usable]:
      example = self._example(record, rng)
      if isinstance(example, str) and example not in WINDOW_REASONS:
        return example
      out.append(example)
    return {"windows": [self._window(out[i:i + self.chunks]) for i in range(0, usable, self.chunks)]}

  def _window(self, window: list) -> list[dict] | str:
    """A document's window, or why it cannot make a row: its first bad chunk's reason, or too_long."""
    reason = next((ex for ex in window if isinstance(ex, str)), None)
    if reason is None and self.chunk_tokens is not None and not fits(window, self.max_len):
      reason = "too_long"
    return reason or window

  def _example(self, record: dict, rng: np.random.Generator) -> dict | str:
    """A caption, question-answer or conversation example, or its skip reason."""
    pick_rng = rng if self.train else None
    if "conversation" in record:
      turns = conversations.parse(record["conversation"])
      if turns is None:
        return "bad_conversation"
      out = {"conversation": turns}
    elif "question" in record:
      qa = question_answer(record, pick_rng)
      if qa is None:
        return "empty_answer"
      out = {"question": qa[0], "answer": qa[1]}
    else:
      out = {"caption": pick_caption(record.get("caption"), pick_rng)}
      if not out["caption"]:
        return "empty_caption"
      if self.boxes:
        objects = boxes.parse_objects(record.get(boxes.OBJECTS_FIELD))
        if objects is None:
          return "bad_box"
        return self._boxed_example(record, out, objects, rng)
    if self.chunk_tokens is not None:  # before decoding: a skipped text spares its image
      tokens = self.chunk_tokens(out)
      if tokens is None:
        return "special_token_in_text"
      out[prompts.TOKENS] = tokens
      if not fits([out], self.max_len):
        return "too_long"
    if not self.decode_images:
      return out
    try:
      im = images.decode_image(record["image"], self.jpeg_decoder)
      if self.train and self.canvas:
        box = images.random_crop_box(*im.size, rng, scale=self.crop_scale)
        pixels, region_box = images.crop_for_device(im, box, self.image_size, self.canvas)
        return {"image": pixels, images.BOX_KEY: region_box, **out}
      if self.train:
        pixels = images.random_resized_crop(im, self.image_size, rng, scale=self.crop_scale)
      else:
        pixels = images.resize_center_crop(im, self.image_size)
    except images.CorruptImageError:
      return "corrupt_image"
    return {"image": pixels, **out}


  def _boxed_example(self, record: dict, out: dict, objects: list[dict], rng: np.random.Generator) -> dict | str:
    """A caption example with its objects in the crop's frame, and its seed (LocCa's task draws)."""
    try:
      im = images.decode_image(record["image"], self.jpeg_decoder)
      width, height = im.size
      crop = (images.random_crop_box(width, height, rng, scale=self.crop_scale) if self.train
              else images.center_box(width, height))
      pixels = images._to_rgb_array(im, crop, self.image_size)  # the crop's box is needed for the objects'
    except images.CorruptImageError:
      return "corrupt_image"
    objects = boxes.crop_objects(objects, crop, width, height)
    return {"image": pixels, **out, boxes.OBJECTS_FIELD: objects, "seed": int(rng.integers(2**62))}


# Reasons of a document's chunk that drop only the window holding it: its text, not its record, is unusable.
WINDOW_REASONS = ("special_token_in_text", "too_long")


def fits(examples: Sequence[dict], max_len: int) -> bool:
  """Whether tokenized examples (prompts.TOKENS) make one sequence of at most max_len tokens."""
  return prompts.sequence_length([ex[prompts.TOKENS] for ex in examples]) <= max_len
