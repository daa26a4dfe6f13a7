"""Object boxes and LocCa's decoder sequences (location-aware captioning, as SigLIP 2 trains).

Boxes are (x0, y0, x1, y1), normalized to [0, 1] of the image's width and height, x0 < x1, y0 < y1.
Real records give them in the field OBJECTS_FIELD beside their caption (JSONL / CSV folder and
array_record sources):

  {"image": ..., "caption": "two dogs on a sofa",
   "objects": [{"box": [0.1, 0.2, 0.45, 0.9], "text": "a brown dog"}, ...]}

A record whose `objects` is not a list of such maps (a box not 4 finite numbers in [0, 1] with
x0 < x1 and y0 < y1, a text not a non-empty string) is skipped and counted as "bad_box"; training
crops move the boxes with the image and drop objects less than MIN_VISIBLE inside the crop. The
shapes world gives every object's box (ShapesSource(boxes=True)); tfds and webdataset sources give
none, and data.format="locca" refuses them (BOX_SOURCES).

Coordinates become location tokens: `bins` = N quantizes each into N bins, tokens "<loc_0>" ..
"<loc_{N-1}>" (the tokenizer option loc=N). Each example's decoder sequence is one task, drawn per
example from its own seed with the configured probabilities (data.locca.tasks):

  caption    [BOS] <caption> CAPTION [EOS]                          trains CAPTION [EOS]
  refexp     [BOS] <refexp> TEXT <sep> <loc_x0><loc_y0><loc_x1><loc_y1> [EOS]   trains the box [EOS]
  grounded   [BOS] <grounded> <loc_x0><loc_y0><loc_x1><loc_y1> TEXT [EOS]       trains TEXT [EOS]

(loss_mask marks the trained tokens). refexp takes an object whose text no other object of the image
shares (else the box is ambiguous); an example with no usable object trains the caption task. Text
that does not fit data.max_len loses tokens from its end; the box and EOS always stay.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

TASKS = ("caption", "refexp", "grounded")
TASK_TOKENS = {"caption": "<caption>", "refexp": "<refexp>", "grounded": "<grounded>"}
SEP_TOKEN = "<sep>"
OBJECTS_FIELD = "objects"
MIN_VISIBLE = 0.5  # of an object's box area that a training crop must keep for it to stay
DEFAULT_TASKS = {"caption": 0.5, "refexp": 0.25, "grounded": 0.25}
SETTINGS_KEYS = ("tasks",)
BOX_SOURCES = ("shapes", "folder", "array_record")  # the sources whose examples carry boxes
MIN_LEN = 9  # [BOS] <task> one token <sep> 4 coordinates [EOS]


# ---------------------------------------------------------------------------- settings

def check_tasks(tasks: Mapping[str, Any] | None, where: str = "data.locca.tasks") -> tuple[tuple[str, float], ...]:
  """The task mix as ((task, probability), ...) in TASKS order; errors name the bad value."""
  if tasks is None:
    tasks = DEFAULT_TASKS
  if hasattr(tasks, "to_dict"):
    tasks = tasks.to_dict()
  if not isinstance(tasks, Mapping) or not tasks:
    raise ValueError(f"{where}={tasks!r} must be a dict task -> probability over {list(TASKS)}, "
                     f"e.g. {DEFAULT_TASKS}")
  unknown = sorted(set(tasks) - set(TASKS))
  if unknown:
    raise ValueError(f"{where}: unknown task(s) {unknown}; valid: {list(TASKS)}")
  probs = {}
  for task, p in tasks.items():
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or p < 0:
      raise ValueError(f"{where}.{task}={p!r} must be a probability >= 0")
    probs[task] = float(p)
  total = sum(probs.values())
  if abs(total - 1.0) > 1e-6:
    raise ValueError(f"{where}={probs} sums to {total:g}; the task probabilities must sum to 1")
  return tuple((t, probs.get(t, 0.0)) for t in TASKS)


def check_settings(data_cfg: Mapping[str, Any]) -> tuple[tuple[str, float], ...]:
  """data.locca (dict(tasks={...})) and the tokenizer's location tokens, for data.format='locca'."""
  from vljax.data import tokenizers  # lazy: tokenizers imports the shapes world, which this module serves

  settings = data_cfg.get("locca", None) or {}
  if hasattr(settings, "to_dict"):
    settings = settings.to_dict()
  unknown = sorted(set(settings) - set(SETTINGS_KEYS))
  if unknown:
    raise ValueError(f"data.locca: unknown key(s) {unknown}; valid: {list(SETTINGS_KEYS)}")
  names = [e.get("name") for e in data_cfg.get("sources", ()) or ()] if data_cfg.get("name") == "mixture" \
      else [data_cfg.get("name", "shapes")]
  for name in names:
    if name not in BOX_SOURCES:
      raise ValueError(f"data.format='locca' reads object boxes, which the {name!r} source does not give; valid "
                       f"sources: {list(BOX_SOURCES)}")
  spec = data_cfg.get("tokenizer", "shapes")
  if tokenizers.LOC_OPTION not in tokenizers.parse_spec(spec)[2]:
    raise ValueError(f"data.format='locca' writes boxes as location tokens, but data.tokenizer={spec!r} has none; "
                     f"valid: add the option loc=N, N >= 2 bins (e.g. {spec.partition('?')[0]!r} + '?loc=32')")
  if int(data_cfg.get("max_len", MIN_LEN)) < MIN_LEN:
    raise ValueError(f"data.max_len={data_cfg.get('max_len')} cannot hold a LocCa box sequence; valid: >= {MIN_LEN}")
  return check_tasks(settings.get("tasks", None))


# ---------------------------------------------------------------------------- boxes

def check_box(value) -> tuple[float, float, float, float] | None:
  """(x0, y0, x1, y1) of a record's box, or None when it is not 4 finite numbers in [0, 1] with
  x0 < x1 and y0 < y1."""
  if not isinstance(value, (list, tuple, np.ndarray)) or len(value) != 4:
    return None
  if any(isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) for v in value):
    return None
  x0, y0, x1, y1 = (float(v) for v in value)
  if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in (x0, y0, x1, y1)) or not (x0 < x1 and y0 < y1):
    return None
  return x0, y0, x1, y1


def parse_objects(value) -> list[dict] | None:
  """A record's objects -> [{"box": (x0, y0, x1, y1), "text": str}], or None when any is bad."""
  if value is None:
    return []
  if not isinstance(value, (list, tuple)):
    return None
  out = []
  for obj in value:
    if not isinstance(obj, Mapping):
      return None
    box, text = check_box(obj.get("box")), obj.get("text")
    if isinstance(text, bytes):
      text = text.decode("utf-8", errors="replace")
    if box is None or not isinstance(text, str) or not text.strip():
      return None
    out.append({"box": box, "text": text.strip()})
  return out


def crop_objects(objects: Sequence[dict], crop: Sequence[float], width: int, height: int,
                 min_visible: float = MIN_VISIBLE) -> list[dict]:
  """Objects (boxes normalized to a width x height image) in the frame of the pixel crop
  (left, top, right, bottom): clipped to it, those keeping less than `min_visible` of their area dropped."""
  left, top, right, bottom = (float(v) for v in crop)
  cw, ch = right - left, bottom - top
  out = []
  for obj in objects:
    x0, y0, x1, y1 = obj["box"]
    ax0, ay0, ax1, ay1 = x0 * width, y0 * height, x1 * width, y1 * height
    cx0, cy0, cx1, cy1 = max(ax0, left), max(ay0, top), min(ax1, right), min(ay1, bottom)
    if cx1 <= cx0 or cy1 <= cy0 or (cx1 - cx0) * (cy1 - cy0) < min_visible * (ax1 - ax0) * (ay1 - ay0):
      continue
    box = ((cx0 - left) / cw, (cy0 - top) / ch, (cx1 - left) / cw, (cy1 - top) / ch)
    out.append({"box": tuple(min(max(v, 0.0), 1.0) for v in box), "text": obj["text"]})
  return out


def quantize(box: Sequence[float], bins: int) -> np.ndarray:
  """int32 [..., 4]: each coordinate in [0, 1] -> its bin in 0..bins-1 (1.0 in the last)."""
  box = np.asarray(box, np.float64)
  return np.clip(np.floor(box * bins), 0, bins - 1).astype(np.int32)


def dequantize(bins_of: np.ndarray, bins: int) -> np.ndarray:
  """float32 [..., 4]: each bin's center; within 0.5 / bins of what quantize read."""
  return ((np.asarray(bins_of, np.float64) + 0.5) / bins).astype(np.float32)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Intersection over union of boxes a, b [..., 4] (x0, y0, x1, y1); 0 when either has no area."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  wa, ha = np.clip(a[..., 2] - a[..., 0], 0, None), np.clip(a[..., 3] - a[..., 1], 0, None)
  wb, hb = np.clip(b[..., 2] - b[..., 0], 0, None), np.clip(b[..., 3] - b[..., 1], 0, None)
  iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
  ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
  inter = iw * ih
  union = wa * ha + wb * hb - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


# ---------------------------------------------------------------------------- sequences

def unique_objects(objects: Sequence[dict]) -> list[int]:
  """Indices of the objects whose text no other object shares: those a referring expression names."""
  texts = [o["text"] for o in objects]
  return [i for i, t in enumerate(texts) if texts.count(t) == 1]


def choose(seed: int, tasks: Sequence[tuple[str, float]], objects: Sequence[dict]) -> tuple[str, int]:
  """(task, object index or -1) of one example, a function of its seed alone."""
  rng = np.random.default_rng(seed)
  names, probs = zip(*tasks)
  task = names[int(rng.choice(len(names), p=np.asarray(probs) / sum(probs)))]
  candidates = unique_objects(objects) if task == "refexp" else list(range(len(objects)))
  if task == "caption" or not candidates:
    return "caption", -1
  return task, candidates[int(rng.integers(len(candidates)))]


def prompt_ids(tokenizer, task: str, text: str = "", box: Sequence[float] | None = None) -> list[int]:
  """What the decoder reads before its target: [BOS] <task> and the input (refexp: TEXT <sep>;
  grounded: the box's location tokens)."""
  head = [tokenizer.bos_id, tokenizer.special_ids[TASK_TOKENS[task]]]
  if task == "refexp":
    return head + tokenizer.content_ids(text) + [tokenizer.special_ids[SEP_TOKEN]]
  if task == "grounded":
    return head + location_ids(tokenizer, box)
  return head


def location_ids(tokenizer, box: Sequence[float]) -> list[int]:
  return [tokenizer.loc_first_id + int(k) for k in quantize(box, tokenizer.loc_bins)]


def sequence(tokenizer, task: str, caption: str, obj: Mapping | None, max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """(ids int32 [max_len], loss_mask bool [max_len]) of one example's task (module docstring)."""
  if task == "caption":
    prompt, target = prompt_ids(tokenizer, task), tokenizer.content_ids(caption)
  elif task == "refexp":  # the text is what may be cut here: the box, <sep> and EOS stay
    text = tokenizer.content_ids(obj["text"])[:max(0, max_len - 8)]
    prompt = [tokenizer.bos_id, tokenizer.special_ids[TASK_TOKENS[task]], *text, tokenizer.special_ids[SEP_TOKEN]]
    target = location_ids(tokenizer, obj["box"])
  else:
    prompt, target = prompt_ids(tokenizer, task, box=obj["box"]), tokenizer.content_ids(obj["text"])
  target = target[:max_len - len(prompt) - 1] + [tokenizer.eos_id]
  ids = np.full(max_len, tokenizer.pad_id, np.int32)
  mask = np.zeros(max_len, bool)
  ids[:len(prompt) + len(target)] = prompt + target
  mask[len(prompt):len(prompt) + len(target)] = True
  return ids, mask


def batch(tokenizer, examples: Sequence[Mapping], tasks: Sequence[tuple[str, float]], max_len: int
          ) -> dict[str, np.ndarray]:
  """The LocCa fields of a batch: locca_text int32 [B, L], locca_mask bool [B, L], locca_task int32
  [B] (index in TASKS). Each example holds "caption", "objects" and "seed"."""
  ids, masks, kinds = [], [], []
  for ex in examples:
    objects = ex.get(OBJECTS_FIELD) or []
    task, k = choose(int(ex["seed"]), tasks, objects)
    i, m = sequence(tokenizer, task, ex["caption"], objects[k] if k >= 0 else None, max_len)
    ids.append(i)
    masks.append(m)
    kinds.append(TASKS.index(task))
  return {"locca_text": np.stack(ids), "locca_mask": np.stack(masks), "locca_task": np.asarray(kinds, np.int32)}
