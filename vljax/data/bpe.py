"""The byte-level BPE of OpenAI CLIP / open_clip, read from `bpe_simple_vocab_16e6.txt.gz`.

Backend ids follow open_clip's `SimpleTokenizer`: the 256 byte characters, the same 256 with the
end-of-word mark "</w>", one token per merge in file order, then "<|startoftext|>" and
"<|endoftext|>". The file is a header line then one merge "a b" per line; like open_clip we read at
most `NUM_MERGES` of them, so the full file gives 49408 ids and a small file simply has fewer.
Text is split into words with CLIP's pattern ('s 't 're 've 'm 'll 'd, letter runs, single digits,
other non-space runs); each word's UTF-8 bytes are merged by rank. Cleaning (lower-casing etc.) is
the caller's job: see `vljax.data.tokenizers`.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import zlib
from collections.abc import Sequence

import regex

NUM_MERGES = 49152 - 256 - 2  # open_clip reads lines[1 : NUM_MERGES + 1]
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"
# The special tokens are left out of the pattern on purpose: text that spells "<|endoftext|>" must
# not be able to put an EOS in the middle of a row.
WORD = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)
_CACHE_SIZE = 1 << 16  # words; cleared when full so that a long data stream cannot grow it forever


@functools.lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
  """GPT-2 / CLIP's reversible byte -> character table; no byte maps to whitespace or a control."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  others = [b for b in range(256) if b not in printable]
  return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def read_merges(path: str) -> list[tuple[str, str]]:
  """Merges of a gzip or plain-text BPE file: lines 2 .. NUM_MERGES + 1, each "a b"."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"BPE merges file {path!r} does not exist.")
  try:
    with open(path, "rb") as f:
      data = f.read()
    if data[:2] == b"\x1f\x8b":  # gzip magic; the name's extension is not trusted
      data = gzip.decompress(data)
    lines = data.decode("utf-8").split("\n")
  except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
    raise ValueError(f"{path!r} is not a readable BPE merges file (gzip or UTF-8 text): {e}") from e
  merges = []
  for number, line in enumerate(lines[1:NUM_MERGES + 1], start=2):
    parts = tuple(line.split())
    if not parts:  # the trailing newline of a short file
      continue
    if len(parts) != 2:
      raise ValueError(f"{path!r} line {number} is not a BPE merge 'a b': {line[:80]!r}.")
    merges.append(parts)
  if not merges:
    raise ValueError(f"{path!r} has no BPE merges after its header line.")
  return merges


class BytePairEncoder:
  """Text <-> backend ids with open_clip's vocabulary layout and merge order."""

  def __init__(self, merges: Sequence[tuple[str, str]]):
    byte_chars = list(bytes_to_unicode().values())
    self.tokens = [*byte_chars, *(c + END_OF_WORD for c in byte_chars), *("".join(m) for m in merges),
                   BOS, EOS]
    self.ids = {t: i for i, t in enumerate(self.tokens)}  # a repeated token keeps its last id, as in open_clip
    self.ranks = {tuple(m): i for i, m in enumerate(merges)}
    self.bos_id, self.eos_id = len(self.tokens) - 2, len(self.tokens) - 1
    self.vocab_size = len(self.tokens)
    self._byte_char = bytes_to_unicode()
    self._char_byte = {c: b for b, c in self._byte_char.items()}
    self._cache: dict[str, tuple[str, ...]] = {}

  def encode(self, text: str) -> list[int]:
    ids = []
    for word in WORD.findall(text):
      ids.extend(self.ids[t] for t in self._merge("".join(self._byte_char[b] for b in word.encode("utf-8"))))
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    out = bytearray()
    for i in ids:
      if i >= self.bos_id:
        continue
      token = self.tokens[i]
      word_end = token.endswith(END_OF_WORD)
      out += bytes(self._char_byte[c] for c in (token[:-len(END_OF_WORD)] if word_end else token))
      out += b" " if word_end else b""
    return out.decode("utf-8", errors="replace").strip()

  def _merge(self, word: str) -> tuple[str, ...]:
    """BPE of one word of byte characters: merge the best-ranked pair everywhere until none is left."""
    if word in self._cache:
      return self._cache[word]
    parts = [*word[:-1], word[-1] + END_OF_WORD]
    while len(parts) > 1:
      best = min(zip(parts, parts[1:]), key=lambda pair: self.ranks.get(pair, math.inf))
      if best not in self.ranks:
        break
      merged, i = [], 0
      while i < len(parts):
        if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
          merged.append(parts[i] + parts[i + 1])
          i += 2
        else:
          merged.append(parts[i])
          i += 1
      parts = merged
    if len(self._cache) >= _CACHE_SIZE:
      self._cache.clear()
    self._cache[word] = tuple(parts)
    return self._cache[word]
