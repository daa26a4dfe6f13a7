"""Text tokenizers with one id layout for every backend.

Every row of `encode(texts, max_len)` is `[BOS] t1 ... tn [EOS] [PAD] ...` with PAD = 0.
Text that does not fit loses content tokens from its end, never its EOS, so every row
has exactly one EOS and it is the last non-pad token: "last-token" pooling can use
`argmax(ids == eos_id)` or `sum(ids != pad_id) - 1` interchangeably.

Backends: `ShapesTokenizer` (word level over the shapes world's `VOCAB`),
`SentencePieceTokenizer` (a `.model` file) and `HuggingFaceTokenizer` (a `tokenizer.json`).
Models whose own vocabulary uses id 0 for something other than padding are shifted up by
one, and BOS/EOS ids are appended when the model has none. Every tokenizer also has the
`SPECIAL_TOKENS` ("<image>" marks where an image goes in interleaved text, "<eoc>" ends a
chunk) as single ids after all others; `vocab_size` counts them all.
`get_tokenizer(spec)` builds one from a config string.
"""

from __future__ import annotations

import abc
import os
import re
from collections.abc import Sequence

import numpy as np

from vljax.data import shapes


SPECIAL_TOKENS = ("<image>", "<eoc>")
_SPECIAL_SPLIT = re.compile("(" + "|".join(map(re.escape, SPECIAL_TOKENS)) + ")")


class Tokenizer(abc.ABC):
  """Texts <-> int32 id rows in the `[BOS] ... [EOS] [PAD]...` layout."""

  vocab_size: int
  pad_id: int = 0
  bos_id: int
  eos_id: int
  special_ids: dict[str, int]  # SPECIAL_TOKENS -> id
  id_offset: int = 0  # our id - the backend's own id (1 when the backend's id 0 is not padding)

  def _add_special_tokens(self, first_id: int) -> None:
    """Give SPECIAL_TOKENS the ids first_id, first_id + 1, ... and count them in vocab_size."""
    self.special_ids = {t: first_id + i for i, t in enumerate(SPECIAL_TOKENS)}
    self._special_text = {i: t for t, i in self.special_ids.items()}
    self.vocab_size = first_id + len(SPECIAL_TOKENS)

  @property
  def image_id(self) -> int:
    return self.special_ids["<image>"]

  @property
  def eoc_id(self) -> int:
    return self.special_ids["<eoc>"]

  def content_ids(self, text: str) -> list[int]:
    """Ids of the text without BOS/EOS; special tokens become their single ids."""
    ids = []
    for part in _SPECIAL_SPLIT.split(text):
      if part in self.special_ids:
        ids.append(self.special_ids[part])
      elif part.strip():
        ids.extend(self._content_ids(part))
    return ids

  @abc.abstractmethod
  def _content_ids(self, text: str) -> list[int]:
    """Ids of the text alone, without BOS/EOS."""

  @abc.abstractmethod
  def _content_text(self, ids: list[int]) -> str:
    """Text of content ids (no specials)."""

  def encode(self, texts: Sequence[str], max_len: int) -> np.ndarray:
    """int32[len(texts), max_len]; long texts are cut so that EOS stays."""
    if isinstance(texts, str):
      raise TypeError(f"encode takes a sequence of texts, got the string {texts!r}; wrap it in a list.")
    if max_len < 2:
      raise ValueError(f"max_len={max_len} leaves no room for BOS and EOS; use max_len >= 2.")
    out = np.full((len(texts), max_len), self.pad_id, np.int32)
    for row, text in enumerate(texts):
      ids = [self.bos_id, *self.content_ids(text)[:max_len - 2], self.eos_id]
      out[row, :len(ids)] = ids
    return out

  def decode(self, ids) -> list[str]:
    """Texts of id rows ([B, L], or one row [L]); stops at EOS, skips BOS and padding."""
    ids = np.asarray(ids)
    if ids.ndim == 1:
      ids = ids[None]
    if ids.ndim != 2:
      raise ValueError(f"decode takes ids of shape [B, L] or [L], got shape {ids.shape}.")
    texts = []
    for row in ids.tolist():
      pieces, content = [], []
      for i in row:
        if i == self.eos_id:
          break
        if i in self._special_text:
          pieces += [self._content_text(content)] if content else []
          pieces.append(self._special_text[i])
          content = []
        elif i not in (self.bos_id, self.pad_id):
          content.append(i)
      pieces += [self._content_text(content)] if content else []
      texts.append(" ".join(pieces))
    return texts


class ShapesTokenizer(Tokenizer):
  """Word level over `shapes.VOCAB`: lowercase, punctuation dropped, unknown words -> UNK."""

  def __init__(self, vocab: Sequence[str] = shapes.VOCAB):
    self.pad_id, self.bos_id, self.eos_id, self.unk_id = 0, 1, 2, 3
    self.words = ("<pad>", "<bos>", "<eos>", "<unk>", *vocab)
    self._ids = {w: i for i, w in enumerate(self.words)}
    self._add_special_tokens(len(self.words))

  def _content_ids(self, text: str) -> list[int]:
    # Same word split as the world's VOCAB, so "circle." and "circle" are one token.
    return [self._ids.get(w, self.unk_id) for w in re.findall(r"[a-z0-9]+|[^\sa-z0-9.,?!;:]+", text.lower())]

  def _content_text(self, ids: list[int]) -> str:
    return " ".join(self.words[i] if 0 <= i < len(self.words) else "<unk>" for i in ids)


def _check_file(path: str, what: str) -> None:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what} file {path!r} does not exist.")


class _ShiftedVocab:
  """Maps a backend's ids into ours: shift by one when the backend's id 0 is not padding."""

  def __init__(self, size: int, pad: int | None, bos: int | None, eos: int | None):
    self.shift = 0 if pad == 0 else 1
    extra = size + self.shift
    self.bos_id = bos + self.shift if bos is not None else extra
    extra += bos is None
    self.eos_id = eos + self.shift if eos is not None else extra
    extra += eos is None
    self.vocab_size = extra
    self.size = size

  def to_backend(self, ids: list[int]) -> list[int]:
    return [i - self.shift for i in ids if self.shift <= i < self.size + self.shift]


class SentencePieceTokenizer(Tokenizer):
  """A sentencepiece `.model`, using its own BOS/EOS/pad ids when it has them."""

  def __init__(self, path: str):
    import sentencepiece as spm

    _check_file(path, "SentencePiece model")
    try:
      self.sp = spm.SentencePieceProcessor(model_file=path)
    except (RuntimeError, OSError) as e:
      raise ValueError(f"{path!r} is not a readable SentencePiece model: {e}") from e
    self.path = path

    def special(i: int) -> int | None:
      return i if i >= 0 else None

    self._map = _ShiftedVocab(self.sp.get_piece_size(), special(self.sp.pad_id()),
                              special(self.sp.bos_id()), special(self.sp.eos_id()))
    self.bos_id, self.eos_id, self.id_offset = self._map.bos_id, self._map.eos_id, self._map.shift
    self._add_special_tokens(self._map.vocab_size)

  def _content_ids(self, text: str) -> list[int]:
    return [i + self._map.shift for i in self.sp.encode(text)]

  def _content_text(self, ids: list[int]) -> str:
    return self.sp.decode(self._map.to_backend(ids))


_HF_PAD = ("<pad>", "[PAD]", "<|padding|>", "<|pad|>")
_HF_BOS = ("<s>", "[BOS]", "<bos>", "<|startoftext|>", "<|begin_of_text|>", "[CLS]")
_HF_EOS = ("</s>", "[EOS]", "<eos>", "<|endoftext|>", "<|end_of_text|>", "[SEP]")


class HuggingFaceTokenizer(Tokenizer):
  """A `tokenizers` JSON file; BOS/EOS/pad are the model's own special tokens when present."""

  def __init__(self, path: str):
    import tokenizers

    _check_file(path, "HuggingFace tokenizer.json")
    try:
      self.tok = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # the library raises a bare Exception for malformed JSON
      raise ValueError(f"{path!r} is not a readable HuggingFace tokenizer.json: {e}") from e
    self.path = path

    def special(names: Sequence[str]) -> int | None:
      for name in names:
        i = self.tok.token_to_id(name)
        if i is not None:
          return i
      return None

    self._map = _ShiftedVocab(self.tok.get_vocab_size(with_added_tokens=True), special(_HF_PAD),
                              special(_HF_BOS), special(_HF_EOS))
    self.bos_id, self.eos_id, self.id_offset = self._map.bos_id, self._map.eos_id, self._map.shift
    self._add_special_tokens(self._map.vocab_size)

  def _content_ids(self, text: str) -> list[int]:
    # Our layout adds BOS/EOS; the file's own post-processor must not add more.
    return [i + self._map.shift for i in self.tok.encode(text, add_special_tokens=False).ids]

  def _content_text(self, ids: list[int]) -> str:
    return self.tok.decode(self._map.to_backend(ids), skip_special_tokens=True)


_SPEC_FORMS = '"shapes", "sentencepiece:/path/to.model", "hf:/path/to/tokenizer.json"'


def get_tokenizer(spec: str) -> Tokenizer:
  """Tokenizer from a config string: one of `_SPEC_FORMS`."""
  kind, _, path = spec.partition(":")
  if kind == "shapes" and not path:
    return ShapesTokenizer()
  if kind == "sentencepiece" and path:
    return SentencePieceTokenizer(path)
  if kind == "hf" and path:
    return HuggingFaceTokenizer(path)
  raise ValueError(f"Unknown tokenizer spec {spec!r}; valid forms are {_SPEC_FORMS}.")
