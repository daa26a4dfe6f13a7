"""Text tokenizers with one id layout for every backend.

Every row of `encode(texts, max_len)` is `[BOS] t1 ... tn [EOS] [PAD] ...` with PAD = 0.
Text that does not fit loses content tokens from its end, never its EOS (nor BOS): a row always
holds its first `max_len - 2` content tokens (`max_len - 1` without BOS) followed by exactly one
EOS. With the default layout EOS is the last non-pad token, so "last-token" pooling can use
`argmax(ids == eos_id)` or `sum(ids != pad_id) - 1` interchangeably.

Backends: `ShapesTokenizer` (word level over the shapes world's `VOCAB`),
`SentencePieceTokenizer` (a `.model` file), `HuggingFaceTokenizer` (a `tokenizer.json`) and
`BpeTokenizer` (open_clip / OpenAI CLIP's `bpe_simple_vocab_16e6.txt.gz`, see `vljax.data.bpe`).
Models whose own vocabulary uses id 0 for something other than padding are shifted up by
one (`id_offset` = 1; CLIP's BPE, where id 0 is "!", is one), and BOS/EOS ids are appended when
the model has none. Every tokenizer also has the `SPECIAL_TOKENS` ("<image>" marks where an image
goes in interleaved text, "<eoc>" ends a chunk) as single ids after all others; `vocab_size`
counts them all.

`get_tokenizer(spec)` builds one from a config string `KIND[:PATH][?KEY=VALUE&KEY=VALUE...]`:

  shapes                                   the shapes world's words
  sentencepiece:/path/to/spm.model         a SentencePiece model
  hf:/path/to/tokenizer.json               a HuggingFace `tokenizers` file
  bpe:/path/to/bpe_simple_vocab_16e6.txt.gz  open_clip's BPE merges (gzip or plain text)

Options (`OPTIONS`), for the layouts and text cleaning of pretrained models; paths cannot hold "?":

  bos=add|none          `none` drops BOS, rows start with the first content token (SigLIP);
                        `bos_id` still exists (appended if the model has none) for generation.
  pad=zero|eos          `eos` fills the row after EOS with EOS instead of 0, as big_vision's SigLIP
                        trains (`eos="sticky", pad_value=1`): rows then hold no pad_id, every
                        position counts as valid and last-token pooling reads the final position,
                        which is always EOS; the first EOS is still `argmax(ids == eos_id)`.
  clean=none|clip|canonicalize
                        applied to text before tokenizing (the "<image>"/"<eoc>" markers are kept):
                        `clip` is open_clip's (ftfy.fix_text when ftfy is installed, else NFC;
                        HTML entities unescaped twice; whitespace collapsed; lower case), and
                        `canonicalize` is big_vision's / HF SiglipTokenizer's (lower case, ASCII
                        punctuation removed, whitespace collapsed). Default `clip` for bpe, `none`
                        for the others.

  loc=N                 N >= 2 location tokens "<loc_0>".."<loc_{N-1}>" (box coordinates quantized
                        into N bins) and LocCa's task tokens (LOCCA_TOKENS), after all other ids:
                        the sequences of data.format="locca" (vljax/data/boxes.py).

For example SigLIP: `sentencepiece:/ckpt/spm.model?bos=none&pad=eos&clean=canonicalize`, and
open_clip's CLIP: `bpe:/ckpt/bpe_simple_vocab_16e6.txt.gz`. `decode` stops at the first EOS and
skips BOS and padding under every option.
"""

from __future__ import annotations

import abc
import html
import os
import re
import string
import unicodedata
from collections.abc import Sequence

import numpy as np

from vljax.data import bpe, shapes

try:
  import ftfy
except ImportError:  # optional: without it mojibake, curly quotes and full-width forms stay as they are
  ftfy = None


SPECIAL_TOKENS = ("<image>", "<eoc>")
_SPECIAL_SPLIT = re.compile("(" + "|".join(map(re.escape, SPECIAL_TOKENS)) + ")")
# With loc=N (add_location_tokens): a task prefix per LocCa task, and the separator that ends a
# referring expression before its box (vljax/data/boxes.py).
LOCCA_TOKENS = ("<caption>", "<refexp>", "<grounded>", "<sep>")
LOC_OPTION = "loc"


def clip_clean(text: str) -> str:
  """open_clip's default cleaning: fix text, unescape HTML twice, collapse whitespace, lower case."""
  # ftfy.fix_text ends with NFC normalisation; without ftfy that part is still done.
  text = ftfy.fix_text(text) if ftfy is not None else unicodedata.normalize("NFC", text)
  text = html.unescape(html.unescape(text)).strip()
  return re.sub(r"\s+", " ", text).strip().lower()


_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def canonicalize(text: str) -> str:
  """big_vision's / HF SiglipTokenizer's canonical text: lower case, no punctuation, single spaces."""
  return re.sub(r"\s+", " ", text.lower().translate(_NO_PUNCTUATION)).strip()


_CLEANERS = {"none": lambda text: text, "clip": clip_clean, "canonicalize": canonicalize}
OPTIONS = {"bos": ("add", "none"), "pad": ("zero", "eos"), "clean": tuple(_CLEANERS)}


def _check_option(key: str, value: str, where: str = "") -> None:
  if key not in OPTIONS:
    raise ValueError(f"Unknown tokenizer option {key!r}{where}; valid options are {', '.join((*OPTIONS, LOC_OPTION))}.")
  if value not in OPTIONS[key]:
    raise ValueError(f"Tokenizer option {key}={value!r}{where} is not valid; valid values for {key} are "
                     f"{', '.join(OPTIONS[key])}.")


PAD_ID = 0  # the layout's padding id, the same for every backend (see the module docstring)


class Tokenizer(abc.ABC):
  """Texts <-> int32 id rows in the `[BOS] ... [EOS] [PAD]...` layout."""

  vocab_size: int
  pad_id: int = PAD_ID
  bos_id: int  # exists even with bos=none, so generation can still start from it
  eos_id: int
  special_ids: dict[str, int]  # SPECIAL_TOKENS -> id
  id_offset: int = 0  # our id - the backend's own id (1 when the backend's id 0 is not padding)
  add_bos: bool = True  # option bos=add|none
  pad_with_eos: bool = False  # option pad=zero|eos
  clean: str = "none"  # option clean=none|clip|canonicalize
  chat_template: str | None = None  # a Hugging Face folder's (vljax/data/conversations.py)
  loc_bins: int = 0  # option loc=N: location tokens (0: none)
  _special_split = _SPECIAL_SPLIT

  def _set_options(self, bos: str, pad: str, clean: str) -> None:
    for key, value in (("bos", bos), ("pad", pad), ("clean", clean)):
      _check_option(key, value)
    self.add_bos, self.pad_with_eos, self.clean = bos == "add", pad == "eos", clean

  def _read_chat_template(self, path: str) -> None:
    """The chat template of the folder holding the tokenizer file, if it has one."""
    from vljax.data import conversations  # it imports this module
    self.chat_template = conversations.read_chat_template(os.path.dirname(os.path.abspath(path)))

  def _add_special_tokens(self, first_id: int) -> None:
    """Give SPECIAL_TOKENS the ids first_id, first_id + 1, ... and count them in vocab_size."""
    self.special_ids = {t: first_id + i for i, t in enumerate(SPECIAL_TOKENS)}
    self._special_text = {i: t for t, i in self.special_ids.items()}
    self.vocab_size = first_id + len(SPECIAL_TOKENS)

  def add_location_tokens(self, bins: int) -> None:
    """LOCCA_TOKENS, then "<loc_0>".."<loc_{bins-1}>", as single ids after all others (option loc=N)."""
    check_loc_bins(bins)
    if self.loc_bins:
      raise ValueError(f"this tokenizer already has {self.loc_bins} location tokens")
    names = LOCCA_TOKENS + tuple(f"<loc_{i}>" for i in range(bins))
    first = self.vocab_size
    self.special_ids = {**self.special_ids, **{t: first + i for i, t in enumerate(names)}}
    self._special_text = {i: t for t, i in self.special_ids.items()}
    self.vocab_size = first + len(names)
    self.loc_bins = int(bins)
    self._special_split = re.compile("(" + "|".join(map(re.escape, SPECIAL_TOKENS + LOCCA_TOKENS)) + r"|<loc_\d+>)")

  @property
  def loc_first_id(self) -> int:
    """The id of "<loc_0>"; bin k is loc_first_id + k."""
    if not self.loc_bins:
      raise ValueError("this tokenizer has no location tokens; add them with the tokenizer option loc=N "
                       "(e.g. data.tokenizer='shapes?loc=32')")
    return self.special_ids["<loc_0>"]

  @property
  def image_id(self) -> int:
    return self.special_ids["<image>"]

  @property
  def eoc_id(self) -> int:
    return self.special_ids["<eoc>"]

  @property
  def fill_id(self) -> int:
    """What follows EOS in `encode` rows: pad_id, or eos_id with pad=eos."""
    return self.eos_id if self.pad_with_eos else self.pad_id

  def content_ids(self, text: str) -> list[int]:
    """Ids of the cleaned text without BOS/EOS; special tokens become their single ids."""
    ids = []
    for part in self._special_split.split(text):
      if part in self.special_ids:
        ids.append(self.special_ids[part])
        continue
      part = _CLEANERS[self.clean](part)
      if part.strip():
        ids.extend(self._content_ids(part))
    return ids

  @abc.abstractmethod
  def _content_ids(self, text: str) -> list[int]:
    """Ids of the text alone, without BOS/EOS."""

  @abc.abstractmethod
  def _content_text(self, ids: list[int]) -> str:
    """Text of content ids (no specials)."""

  def encode(self, texts: Sequence[str], max_len: int) -> np.ndarray:
    """int32[len(texts), max_len]; long texts lose content from their end so that EOS stays."""
    if isinstance(texts, str):
      raise TypeError(f"encode takes a sequence of texts, got the string {texts!r}; wrap it in a list.")
    head = [self.bos_id] if self.add_bos else []
    if max_len < len(head) + 1:
      raise ValueError(f"max_len={max_len} leaves no room for {'BOS and ' * self.add_bos}EOS; "
                       f"use max_len >= {len(head) + 1}.")
    out = np.full((len(texts), max_len), self.fill_id, np.int32)
    for row, text in enumerate(texts):
      ids = [*head, *self.content_ids(text)[:max_len - len(head) - 1], self.eos_id]
      out[row, :len(ids)] = ids
    return out

  def decode(self, ids) -> list[str]:
    """Texts of id rows ([B, L], or one row [L]); stops at the first EOS, skips BOS and padding."""
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

  def __init__(self, vocab: Sequence[str] = shapes.VOCAB, *, bos: str = "add", pad: str = "zero",
               clean: str = "none"):
    self._set_options(bos, pad, clean)
    self.pad_id, self.bos_id, self.eos_id, self.unk_id = PAD_ID, 1, 2, 3
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

  def __init__(self, path: str, *, bos: str = "add", pad: str = "zero", clean: str = "none"):
    import sentencepiece as spm

    self._set_options(bos, pad, clean)
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
    self._read_chat_template(path)

  def _content_ids(self, text: str) -> list[int]:
    return [i + self._map.shift for i in self.sp.encode(text)]

  def _content_text(self, ids: list[int]) -> str:
    return self.sp.decode(self._map.to_backend(ids))


_HF_PAD = ("<pad>", "[PAD]", "<|padding|>", "<|pad|>")
_HF_BOS = ("<s>", "[BOS]", "<bos>", "<|startoftext|>", "<|begin_of_text|>", "[CLS]")
_HF_EOS = ("</s>", "[EOS]", "<eos>", "<|endoftext|>", "<|end_of_text|>", "[SEP]")


class HuggingFaceTokenizer(Tokenizer):
  """A `tokenizers` JSON file; BOS/EOS/pad are the model's own special tokens when present."""

  def __init__(self, path: str, *, bos: str = "add", pad: str = "zero", clean: str = "none"):
    import tokenizers

    self._set_options(bos, pad, clean)
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
    self._read_chat_template(path)

  def _content_ids(self, text: str) -> list[int]:
    # Our layout adds BOS/EOS; the file's own post-processor must not add more.
    return [i + self._map.shift for i in self.tok.encode(text, add_special_tokens=False).ids]

  def _content_text(self, ids: list[int]) -> str:
    return self.tok.decode(self._map.to_backend(ids), skip_special_tokens=True)


class BpeTokenizer(Tokenizer):
  """open_clip / OpenAI CLIP's byte-level BPE from `bpe_simple_vocab_16e6.txt.gz` (gzip or plain text).

  BOS/EOS are "<|startoftext|>"/"<|endoftext|>"; the backend's id 0 is "!", so every id is shifted
  up by one (with the full file, "a</w>" is 321 here and 320 in open_clip; EOS is 49408).
  """

  def __init__(self, path: str, *, bos: str = "add", pad: str = "zero", clean: str = "clip"):
    self._set_options(bos, pad, clean)
    self.bpe = bpe.BytePairEncoder(bpe.read_merges(path))
    self.path = path
    self._map = _ShiftedVocab(self.bpe.vocab_size, None, self.bpe.bos_id, self.bpe.eos_id)
    self.bos_id, self.eos_id, self.id_offset = self._map.bos_id, self._map.eos_id, self._map.shift
    self._add_special_tokens(self._map.vocab_size)

  def _content_ids(self, text: str) -> list[int]:
    return [i + self._map.shift for i in self.bpe.encode(text)]

  def _content_text(self, ids: list[int]) -> str:
    return self.bpe.decode(self._map.to_backend(ids))


_BACKENDS = {"shapes": ShapesTokenizer, "sentencepiece": SentencePieceTokenizer, "hf": HuggingFaceTokenizer,
             "bpe": BpeTokenizer}
_SPEC_FORMS = ('"shapes", "sentencepiece:/path/to.model", "hf:/path/to/tokenizer.json", '
               '"bpe:/path/to/bpe_simple_vocab_16e6.txt.gz", each optionally followed by "?key=value&..." '
               f"with keys {', '.join((*OPTIONS, LOC_OPTION))}")


def check_loc_bins(bins) -> int:
  """Option loc=N: an int >= 2, or an error naming the value."""
  try:
    n = int(bins)
  except (TypeError, ValueError):
    n = None
  if n is None or isinstance(bins, bool) or str(bins).strip() != str(n) or n < 2:
    raise ValueError(f"Tokenizer option loc={bins!r} is not valid; valid: an integer number of location bins >= 2 "
                     "(e.g. loc=32)")
  return n


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
  """(kind, path, options) of `KIND[:PATH][?KEY=VALUE&...]`; raises ValueError naming what is wrong."""
  body, has_options, query = spec.partition("?")
  kind, _, path = body.partition(":")
  if kind not in _BACKENDS or bool(path) == (kind == "shapes"):
    raise ValueError(f"Unknown tokenizer spec {spec!r}; valid forms are {_SPEC_FORMS}.")
  options = {}
  for item in query.split("&") if has_options else ():
    key, eq, value = item.partition("=")
    if not eq:
      raise ValueError(f"Tokenizer option {item!r} in spec {spec!r} is not KEY=VALUE; valid keys are "
                       f"{', '.join(OPTIONS)}.")
    if key in options:
      raise ValueError(f"Tokenizer option {key!r} is given twice in spec {spec!r}.")
    if key == LOC_OPTION:
      check_loc_bins(value)
    else:
      _check_option(key, value, f" in spec {spec!r}")
    options[key] = value
  return kind, path, options


def get_tokenizer(spec: str) -> Tokenizer:
  """Tokenizer from a config string `KIND[:PATH][?KEY=VALUE&...]` (see the module docstring)."""
  kind, path, options = parse_spec(spec)
  loc = options.pop(LOC_OPTION, None)
  tok = _BACKENDS[kind](**options) if kind == "shapes" else _BACKENDS[kind](path, **options)
  if loc is not None:
    tok.add_location_tokens(check_loc_bins(loc))
  return tok
