"""What a record holds, and which batch formats that feeds: captions, question-answer pairs,
conversations, documents.

Four kinds of record, named by the keys of the data config (and of each mixture entry):

  caption   {image_key: IMAGE, caption_key: str | [str]}
  VQA       {image_key: IMAGE, question_key: str, answer_key: str | [str]}
  conversation {image_key: IMAGE, conversation_key: [{"from": "human" | "gpt", "value": str}, ...]}
            LLaVA's visual instruction records (or "role" / "content" turns): vljax/data/conversations.py
  document  {chunks_key: [CHUNK, ...]}, each CHUNK a caption or VQA map in the same keys:
            {"chunks": [{"image": "a.png", "caption": "a red circle"},
                        {"image": "b.png", "question": "what color is the star?", "answer": "blue"}]}

IMAGE is a path relative to the index file (folder / JSONL source) or the encoded bytes
(array_record source). A record is a conversation when it holds conversation_key, VQA when it
holds question_key or answer_key, else a caption record; a source reads documents exactly when its chunks_key is set ("" by default).

Formats: caption formats ("caption", "hard_negatives") read caption records (a VQA record there has no
caption: skipped as empty_caption). Chunked formats ("vlm", "lm") read caption and VQA records as
chunks (and conversations, one chunk each), data.chunks consecutive examples to a sequence, or documents cut into sequences of
data.chunks consecutive chunks (a shorter rest is dropped; a document shorter than one sequence is
skipped as short_document). "lm" reads no image, yet a chunk still needs one.

tfds sources give caption records only; question/answer keys are read by the folder (JSONL),
array_record and webdataset (a sample's .json) sources, conversation and chunks keys by the folder
and array_record ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from vljax.data.sources import skips

DOCUMENT_SOURCES = ("folder", "array_record")
OBJECTS_FIELD = "objects"  # a caption record's object boxes and texts (vljax/data/boxes.py)
QA_SOURCES = DOCUMENT_SOURCES + ("webdataset",)


@dataclasses.dataclass(frozen=True)
class RecordKeys:
  """The record fields a run reads; "" = that kind of record is not read."""

  image: str = "image"
  caption: str = "caption"
  question: str = ""
  answer: str = ""
  chunks: str = ""
  conversation: str = ""

  def used(self) -> tuple[str, ...]:
    """The fields a source keeps of each record (with the object boxes, which formats that read
    boxes use: vljax/data/boxes.py)."""
    return tuple(k for k in (self.image, self.caption, self.question, self.answer, self.chunks, self.conversation)
                 if k) + (OBJECTS_FIELD,)


def record_keys(spec, chunked: bool) -> RecordKeys:
  """The keys a source spec reads for a format: caption formats read captions alone."""
  if not chunked:
    return RecordKeys(spec.image_key, spec.caption_key)
  conversation = spec.conversation_key if spec.name in DOCUMENT_SOURCES else ""
  return RecordKeys(spec.image_key, spec.caption_key, spec.question_key, spec.answer_key, spec.chunks_key,
                    conversation)


def check_spec(spec, where: str, data_format: str, chunked: bool, chunked_formats: Sequence[str]) -> None:
  """The keys of one source fit data.format (no file opened); errors name the key and what is valid."""
  if bool(spec.question_key) != bool(spec.answer_key):
    raise ValueError(f"{where}: data.question_key={spec.question_key!r} and data.answer_key={spec.answer_key!r} "
                     "are set together (question-answer records) or both ''")
  if spec.chunks_key:
    if not chunked:
      raise ValueError(f"{where}: data.chunks_key={spec.chunks_key!r} reads interleaved documents, which feed the "
                       f"chunked formats {list(chunked_formats)}, not data.format={data_format!r}; valid: one of "
                       "those, or data.chunks_key=''")
    if spec.name not in DOCUMENT_SOURCES:
      raise ValueError(f"{where}: data.chunks_key={spec.chunks_key!r}: the {spec.name!r} source has no documents; "
                       f"sources with documents: {list(DOCUMENT_SOURCES)}")
    return
  if not chunked and not spec.caption_key:
    raise ValueError(f"{where}: data.format={data_format!r} reads captions but data.caption_key is ''; valid: "
                     f"a caption_key, or a chunked data.format {list(chunked_formats)} for question-answer records")
  qa = bool(spec.question_key) and spec.name in QA_SOURCES
  conversations = bool(spec.conversation_key) and spec.name in DOCUMENT_SOURCES
  if chunked and not spec.caption_key and not qa and not conversations:
    raise ValueError(f"{where}: data.format={data_format!r} needs caption, question-answer or "
                     f"conversation chunks, but the {spec.name!r} source is set to read none (data.caption_key="
                     f"{spec.caption_key!r}, data.question_key={spec.question_key!r}, data.conversation_key="
                     f"{spec.conversation_key!r}); valid: set data.caption_key"
                     + (", data.question_key/answer_key" if spec.name in QA_SOURCES
                        else f" (question-answer records come from {list(QA_SOURCES)})")
                     + (", data.conversation_key" if spec.name in DOCUMENT_SOURCES else "")
                     + (" or data.chunks_key" if spec.name in DOCUMENT_SOURCES else ""))


def check_present(keys: RecordKeys, present: Sequence[str], where: str, what: str = "keys") -> None:
  """The fields a run reads are among a source's `present` record keys / columns."""
  def fail(message: str):
    raise ValueError(f"{where}: {message}; its {what}: {sorted(present)}")

  if keys.chunks:
    if keys.chunks not in present:
      fail(f"data.chunks_key={keys.chunks!r} is not in its records")
    return
  if keys.image not in present:
    fail(f"data.image_key={keys.image!r} is not in its records")
  if not keys.question and not keys.conversation:  # captions only
    if keys.caption not in present:
      fail(f"data.caption_key={keys.caption!r} is not in its records")
    return
  has_qa = bool(keys.question) and keys.question in present and keys.answer in present
  if not has_qa and keys.caption not in present and keys.conversation not in present:
    fail(f"none of data.caption_key={keys.caption!r}, data.question_key={keys.question!r} with "
         f"data.answer_key={keys.answer!r}, data.conversation_key={keys.conversation!r} is in its records")


# A source's image loader: the record's image value -> encoded bytes, or a skip reason (a str).
ImageLoader = Callable[[Any], "bytes | str"]


def _chunk(fields: Any, keys: RecordKeys, load_image: ImageLoader) -> dict:
  """One caption, VQA or conversation map -> {"image": bytes, "caption"} / {"image", "question", "answer"} /
  {"image", "conversation"}, or a marker."""
  if not isinstance(fields, Mapping):
    return skips.marker("bad_record")
  image = load_image(fields.get(keys.image))
  if isinstance(image, str):
    return skips.marker(image)
  if keys.conversation and keys.conversation in fields:
    return {"image": image, "conversation": fields[keys.conversation]}
  if keys.question and (keys.question in fields or keys.answer in fields):
    return {"image": image, "question": fields.get(keys.question), "answer": fields.get(keys.answer)}
  out = {"image": image, "caption": fields.get(keys.caption) if keys.caption else None}
  if OBJECTS_FIELD in fields:  # object boxes: read (and checked) by formats that read boxes only
    out[OBJECTS_FIELD] = fields[OBJECTS_FIELD]
  return out


def read_record(record: Any, keys: RecordKeys, load_image: ImageLoader, key: str) -> dict:
  """A source's record -> the raw record examples.Preprocess reads (or a skip marker):
  {"key", "image", "caption"}, {"key", "image", "question", "answer"} or {"key", "chunks": [...]}."""
  if not isinstance(record, Mapping):
    return skips.marker("bad_record")
  if not keys.chunks:
    out = _chunk(record, keys, load_image)
    return out if skips.is_marker(out) else {"key": key, **out}
  chunks = record.get(keys.chunks)
  if not isinstance(chunks, (list, tuple)) or not chunks:
    return skips.marker("bad_record")
  out = []
  for fields in chunks:
    chunk = _chunk(fields, keys, load_image)
    if skips.is_marker(chunk):  # one bad chunk spoils its document: its sequences would skip an image
      return chunk
    out.append(chunk)
  return {"key": key, "chunks": out}
