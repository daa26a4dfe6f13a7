"""Compositionality benchmarks on disk, read in their released layouts.

  dataset = dict(layout="sugarcrepe", path="sugarcrepe/", image_root="coco/val2017")
  dataset = dict(layout="aro", path="visual_genome_relation.json", image_root="vg/images")
  dataset = dict(layout="winoground", path="winoground/examples.jsonl", image_root="winoground/images")
  dataset = dict(layout="jsonl", path="negatives.jsonl")   # {"image", "positive", "negatives", "category"?}

Layouts:
  sugarcrepe  one JSON file, or a folder of them (add_att.json, replace_rel.json, swap_obj.json, ...),
              each mapping an id to {"filename", "caption", "negative_caption"}; the file's stem is
              the category
  aro         a JSON list of {"image_path", "true_caption", "false_caption"} (VG-Relation and
              VG-Attribution); "bbox_x/y/w/h", when present, crop the image as ARO does, and
              "relation_name" (or the "attributes" pair) is the category
  winoground  JSONL of {"image_0", "image_1", "caption_0", "caption_1"}; image names without a suffix
              get ".png" (the release's images/ex_0_img_0.png)
  jsonl       one image per line: "image", "positive", "negatives" (a list), optional "category"

Other keys: image_root (default: the file's folder), num_threads, cache_mb (vljax.evals.datasets).
Every row and every image file is checked when the set is opened, so a malformed row or a missing
image fails the run before it starts, naming the row or the file.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from etils import epath

from vljax.evals import datasets

LAYOUT_KEYS = ("layout", "path", "image_root", "num_threads", "cache_mb")
IMAGE_SUFFIX = ".png"  # Winoground's image names carry none


@dataclasses.dataclass
class ChoiceSet:
  """One image per row; its true caption must outscore every one of its negatives."""
  images: datasets.EvalImages | datasets.ArrayImages
  positives: list[str]
  negatives: list[list[str]]  # at least one per row
  categories: list[str]


@dataclasses.dataclass
class PairSet:
  """Winoground: example k's image_0 is image 2k and its image_1 image 2k + 1."""
  images: datasets.EvalImages
  captions: list[tuple[str, str]]


@dataclasses.dataclass
class _Row:
  image: epath.Path
  positive: str
  negatives: list[str]
  category: str
  where: str
  crop: tuple[int, int, int, int] | None = None  # x, y, w, h


def _text(row: Mapping[str, Any], key: str, where: str) -> str:
  value = row.get(key)
  if not isinstance(value, str) or not value.strip():
    raise ValueError(f"{where}: needs a non-empty caption string under {key!r}; got {value!r}")
  return value.strip()


def _fields(row: Any, keys: Sequence[str], where: str) -> Mapping[str, Any]:
  if not isinstance(row, Mapping) or any(k not in row for k in keys):
    got = sorted(row) if isinstance(row, Mapping) else type(row).__name__
    raise ValueError(f"{where}: a row needs the keys {list(keys)}; got {got}")
  return row


def _load_json(path: epath.Path) -> Any:
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{os.fspath(path)}: not JSON: {e}") from e


def _jsonl_rows(path: epath.Path) -> list[tuple[str, Any]]:
  rows = []
  for n, line in enumerate(path.read_text().splitlines(), 1):
    if line.strip():
      try:
        rows.append((f"{os.fspath(path)}:{n}", json.loads(line)))
      except json.JSONDecodeError as e:
        raise ValueError(f"{os.fspath(path)}:{n}: not a JSON object: {e}") from e
  return rows


def _sugarcrepe(path: epath.Path, root: epath.Path) -> list[_Row]:
  files = sorted(path.glob("*.json")) if path.is_dir() else [path]
  if not files:
    raise FileNotFoundError(f"dataset path {os.fspath(path)!r} holds no SugarCrepe .json file")
  rows = []
  for file in files:
    table = _load_json(file)
    if not isinstance(table, Mapping):
      raise ValueError(f"{os.fspath(file)}: SugarCrepe maps ids to rows; got a {type(table).__name__}")
    for key, row in table.items():
      where = f"{os.fspath(file)} id {key}"
      row = _fields(row, ("filename", "caption", "negative_caption"), where)
      rows.append(_Row(root / str(row["filename"]), _text(row, "caption", where),
                       [_text(row, "negative_caption", where)], file.stem, where))
  return rows


def _aro_crop(row: Mapping[str, Any], where: str) -> tuple[int, int, int, int] | None:
  keys = ("bbox_x", "bbox_y", "bbox_w", "bbox_h")
  if not any(k in row for k in keys):
    return None
  box = [row.get(k) for k in keys]
  if not all(isinstance(v, (int, float)) for v in box) or box[2] <= 0 or box[3] <= 0:
    raise ValueError(f"{where}: {dict(zip(keys, box))} is not a box (numbers, width and height > 0)")
  return tuple(int(v) for v in box)


def _aro(path: epath.Path, root: epath.Path) -> list[_Row]:
  table = _load_json(path)
  if not isinstance(table, list):
    raise ValueError(f"{os.fspath(path)}: ARO holds a JSON list of rows; got a {type(table).__name__}")
  rows = []
  for i, row in enumerate(table):
    where = f"{os.fspath(path)} row {i}"
    row = _fields(row, ("image_path", "true_caption", "false_caption"), where)
    attributes = row.get("attributes")
    category = row.get("relation_name") or (" ".join(map(str, attributes)) if attributes else "all")
    rows.append(_Row(root / str(row["image_path"]), _text(row, "true_caption", where),
                     [_text(row, "false_caption", where)], str(category), where, _aro_crop(row, where)))
  return rows


def _choices_jsonl(path: epath.Path, root: epath.Path) -> list[_Row]:
  rows = []
  for where, row in _jsonl_rows(path):
    row = _fields(row, ("image", "positive", "negatives"), where)
    negatives = row["negatives"]
    if not isinstance(negatives, list) or not negatives:
      raise ValueError(f"{where}: 'negatives' must be a non-empty list of captions; got {negatives!r}")
    rows.append(_Row(root / str(row["image"]), _text(row, "positive", where),
                     [_text({"n": n}, "n", f"{where} negative {j}") for j, n in enumerate(negatives)],
                     str(row.get("category", "all")), where))
  return rows


def _check_images(paths: Sequence[epath.Path], wheres: Sequence[str], root: epath.Path) -> None:
  missing = [(p, w) for p, w in zip(paths, wheres) if not p.exists()]
  if missing:
    (p, w), n = missing[0], len(missing)
    raise FileNotFoundError(f"{n} image file(s) missing, e.g. {os.fspath(p)!r} of {w}; image paths are "
                            f"relative to image_root={os.fspath(root)!r}")


def _read(path: epath.Path, crop: tuple[int, int, int, int] | None) -> bytes:
  data = path.read_bytes()
  if crop is None:
    return data
  from PIL import Image  # only ARO's boxes need it

  x, y, w, h = crop
  out = io.BytesIO()
  Image.open(io.BytesIO(data)).convert("RGB").crop((x, y, x + w, y + h)).save(out, format="PNG")
  return out.getvalue()


def _eval_images(read: Callable[[int], bytes], n: int, spec: Mapping[str, Any], where: str, *, image_size: int,
                 normalization: str) -> datasets.EvalImages:
  return datasets.EvalImages(read, range(n), image_size, normalization, num_threads=spec.get("num_threads"),
                             cache_mb=float(spec.get("cache_mb", datasets.DEFAULT_CACHE_MB)),
                             describe=lambda i: f"image {i}", where=where)


CHOICE_LAYOUTS = {"sugarcrepe": _sugarcrepe, "aro": _aro, "jsonl": _choices_jsonl}
LAYOUTS = (*CHOICE_LAYOUTS, "winoground")


def _paths(spec: Mapping[str, Any]) -> tuple[str, epath.Path, epath.Path]:
  datasets.check_keys(spec, LAYOUT_KEYS, "dataset")
  layout = spec.get("layout")
  if layout not in LAYOUTS:
    raise ValueError(f"dataset layout {layout!r} is unknown; valid: {list(LAYOUTS)}")
  if not spec.get("path"):
    raise ValueError(f"a {layout} dataset needs path=...")
  path = epath.Path(spec["path"])
  if not path.exists():
    raise FileNotFoundError(f"dataset path {os.fspath(path)!r} does not exist")
  root = epath.Path(spec.get("image_root") or (path if path.is_dir() else path.parent))
  return layout, path, root


def open_set(spec: Mapping[str, Any], *, image_size: int, normalization: str = "siglip",
             num_examples: int | None = None) -> ChoiceSet | PairSet:
  """The set `spec` names, its first num_examples rows (examples, for Winoground)."""
  layout, path, root = _paths(spec)
  if layout == "winoground":
    return _open_pairs(spec, path, root, image_size, normalization, num_examples)
  rows = CHOICE_LAYOUTS[layout](path, root)[:num_examples]
  if not rows:
    raise ValueError(f"dataset {os.fspath(path)!r} holds no rows")
  _check_images([r.image for r in rows], [r.where for r in rows], root)
  images = _eval_images(lambda i: _read(rows[i].image, rows[i].crop), len(rows), spec, os.fspath(path),
                        image_size=image_size, normalization=normalization)
  return ChoiceSet(images, [r.positive for r in rows], [r.negatives for r in rows], [r.category for r in rows])


def _open_pairs(spec, path, root, image_size, normalization, num_examples) -> PairSet:
  images, captions, wheres = [], [], []
  for where, row in _jsonl_rows(path)[:num_examples]:
    row = _fields(row, ("image_0", "image_1", "caption_0", "caption_1"), where)
    for k in ("image_0", "image_1"):
      name = str(row[k])
      images.append(root / (name if os.path.splitext(name)[1] else name + IMAGE_SUFFIX))
      wheres.append(where)
    captions.append((_text(row, "caption_0", where), _text(row, "caption_1", where)))
  if not captions:
    raise ValueError(f"dataset {os.fspath(path)!r} holds no rows")
  _check_images(images, wheres, root)
  return PairSet(_eval_images(lambda i: images[i].read_bytes(), len(images), spec, os.fspath(path),
                              image_size=image_size, normalization=normalization), captions)
