"""Image-text data -> ArrayRecord files for the `array_record` source (the fast path).

  python -m vljax.data.convert --input 'shards/{00000..00099}.tar' --output DIR [--records_per_file N]
  python -m vljax.data.convert --input data/captions.jsonl --output DIR --caption_key text
  python -m vljax.data.convert --input data/vqa.jsonl --output DIR --question_key q --answer_key a
  python -m vljax.data.convert --input data/documents.jsonl --output DIR --chunks_key chunks

--input is tar shards (a pattern with braces and globs, or a directory of *.tar) or a folder
source's .jsonl/.csv index. Every sample is checked as training would read it: the image must
decode and the caption (question and answer) must not be empty; a document is written only when
every chunk passes. Good samples are written with their image bytes unchanged to
DIR/data-NNNNN.array_record, under the default key names whatever the input's were (record format:
vljax/data/sources/records.py):

  {"key", "image", "caption"}   {"key", "image", "question", "answer"}
  {"key", "chunks": [{"image", "caption"} | {"image", "question", "answer"}, ...]}  (read them with
                                                                                    data.chunks_key="chunks")

A JSONL row (a tar sample's .json) is a question-answer record when it holds --question_key or
--answer_key; with
--chunks_key every row is a document. The others are counted by reason and printed at the end,
with the count written.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import os
import sys
from collections.abc import Iterator

from tqdm import tqdm

from vljax.data import images
from vljax.data.sources import examples, fields, folder, records, skips, webdataset


def _raw_records(input_path: str, keys: fields.RecordKeys) -> tuple[Iterator[dict], int | None, str]:
  """(raw records or markers, how many if known, a description) of the input."""
  if input_path.endswith(folder.INDEX_SUFFIXES) or (
      os.path.isdir(input_path) and not glob.glob(os.path.join(input_path, f"*{webdataset.SUFFIX}"))):
    source = folder.FolderSource(input_path, *dataclasses.astuple(keys))
    return (source[i] for i in range(len(source))), len(source), f"folder {source.index}"
  shards = webdataset.shard_paths(input_path)
  return ((r for path in shards for r in webdataset.read_shard(path, keys.caption, keys.question, keys.answer)), None,
          f"{len(shards)} tar shard(s)")


def check_sample(record: dict) -> str | None:
  """The skip reason of a raw record, or None when training can use it."""
  if skips.is_marker(record):
    return record["skip"]
  if "chunks" in record:
    return next((reason for reason in map(check_sample, record["chunks"]) if reason), None)
  if "question" in record:
    if examples.question_answer(record, None) is None:
      return "empty_answer"
  elif not examples.pick_caption(record.get("caption"), None):
    return "empty_caption"
  try:
    images.resize_center_crop(images.decode_image(record["image"]), 16)  # loads every pixel row
  except images.CorruptImageError:
    return "corrupt_image"
  return None


def _caption(caption):
  """Text, or a list of texts, as stored: bytes decoded, blanks dropped."""
  if isinstance(caption, (list, tuple)):
    return [t for t in (examples.pick_caption(c, None) for c in caption) if t]
  return examples.pick_caption(caption, None)


def _stored(record: dict) -> dict:
  """A checked raw record as written: default key names, texts cleaned, image bytes unchanged."""
  if "chunks" in record:
    out = {"chunks": [_stored(chunk) for chunk in record["chunks"]]}
  elif "question" in record:
    out = {"image": bytes(record["image"]), "question": examples.pick_caption(record["question"], None),
           "answer": _caption(record["answer"])}
  else:
    out = {"image": bytes(record["image"]), "caption": _caption(record["caption"])}
  return {"key": record["key"], **out} if "key" in record else out


def convert(input_path: str, output_dir: str, records_per_file: int = 10_000, image_key: str = "image",
            caption_key: str = "caption", progress: bool = True, *, question_key: str = "question",
            answer_key: str = "answer", chunks_key: str = "") -> tuple[int, dict[str, int], list[str]]:
  """(written, skipped by reason, output files)."""
  existing = glob.glob(os.path.join(output_dir, f"*{records.SUFFIX}"))
  if existing:
    raise FileExistsError(f"--output {output_dir!r} already holds {len(existing)} {records.SUFFIX} file(s); "
                          "give an empty or new directory")
  keys = fields.RecordKeys(image_key, caption_key, question_key, answer_key, chunks_key)
  raw, total, description = _raw_records(input_path, keys)
  skipped: collections.Counter[str] = collections.Counter()
  with records.RecordWriter(output_dir, records_per_file) as writer:
    for record in tqdm(raw, total=total, desc=f"convert {description}", unit=" samples", disable=not progress):
      reason = check_sample(record)
      if reason:
        skipped[reason] += 1
      else:
        writer.write_packed(records.pack(_stored(record)))
  if not writer.written:
    raise ValueError(f"--input {input_path!r}: no usable sample (skipped: {dict(skipped) or 'none'})")
  return writer.written, dict(skipped), writer.paths


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m vljax.data.convert", description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--input", required=True, help="tar shards (pattern with {a..b} / globs, or a directory) "
                      "or a .jsonl / .csv index of an image folder")
  parser.add_argument("--output", required=True, help="directory for the data-NNNNN.array_record files")
  parser.add_argument("--records_per_file", type=int, default=10_000, help="records per output file (10000)")
  parser.add_argument("--image_key", default="image", help="folder index: the image path column (image)")
  parser.add_argument("--caption_key", default="caption",
                      help="folder index column / shard .json field of the caption (caption)")
  parser.add_argument("--question_key", default="question", help="folder index: the question column (question)")
  parser.add_argument("--answer_key", default="answer", help="folder index: the answer column (answer)")
  parser.add_argument("--chunks_key", default="", help="folder index: each row is an interleaved document, its "
                      "chunks under this key ('': no documents)")
  parser.add_argument("--no_progress", action="store_true", help="no progress bar")
  args = parser.parse_args(argv)
  try:
    written, skipped, paths = convert(args.input, args.output, args.records_per_file, args.image_key,
                                      args.caption_key, progress=not args.no_progress, question_key=args.question_key,
                                      answer_key=args.answer_key, chunks_key=args.chunks_key)
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"written: {written} records in {len(paths)} file(s) under {args.output}")
  print(f"skipped: {sum(skipped.values())}" + "".join(f"\n  {r}: {c}" for r, c in sorted(skipped.items())))
  return 0


if __name__ == "__main__":
  sys.exit(main())
