"""The embedded "shapes" world: procedural image-text pairs from (seed, split, index) alone.

Every example is drawn from `np.random.default_rng([seed, stream, index])`, so it is
random access, infinite, identical on every host and checkpointable as an index.
Splits are separate rng streams (the stream id is part of the seed), not index ranges:
`train` is stream 0, `eval` 1, and the evaluation tasks have their own held-out
streams (zero-shot 2, binding 3, VQA 4, caption references 5); VQA training pairs
(for language-model training and few-shot support examples) are stream 6. All of them cover every index.

An image is a low-contrast gray texture with pixel noise and 1-3 flat-colored objects,
each a shape x color x size in a distinct cell of a 3x3 grid. Captions are lowercase
and use only the words in `VOCAB`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross", "heart", "hexagon", "diamond")
# Saturated hues plus the two extremes of brightness: all far from the mid-gray,
# low-saturation background and from each other.
COLORS = {
    "red": (225, 25, 25),
    "green": (30, 185, 45),
    "blue": (35, 75, 245),
    "yellow": (250, 225, 20),
    "purple": (155, 45, 215),
    "orange": (255, 135, 0),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
COLOR_NAMES = tuple(COLORS)
SIZES = ("small", "large")
SIZE_FRACTION = {"small": 0.5, "large": 0.8}  # of a grid cell
POSITIONS = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
SPLITS = {"train": 0, "eval": 1}
_ZEROSHOT_STREAM, _BINDING_STREAM, _VQA_STREAM, _CAPTION_STREAM, _VQA_TRAIN_STREAM = 2, 3, 4, 5, 6
_KIND_STREAM, _CONVERSATION_TRAIN_STREAM, _CONVERSATION_STREAM = 7, 8, 9  # 7: ShapesSource's choice of kind
_LOCCA_STREAM = 10  # ShapesSource(boxes=True): each example's LocCa draws (task, object)
# A conversation's first request: the scene described (its answer, a caption of the world's).
DESCRIBE_REQUESTS = ("what is in the image?", "caption the image.", "what is in this picture?")
# Its follow-up questions: those of QUESTION_TYPES that any scene can answer.
CONVERSATION_QUESTION_TYPES = ("color", "count", "exists")

PROMPT_TEMPLATES = (
    "a {}.",
    "a photo of a {}.",
    "a picture of a {}.",
    "there is a {}.",
    "a small {}.",
    "a large {}.",
    "a {} on a noisy background.",
    "an image of a {}.",
)

# Relation of a subject to a reference object; the first phrase is canonical.
RELATIONS = {
    "left": ("to the left of", "left of"),
    "right": ("to the right of", "right of"),
    "above": ("above", "over"),
    "below": ("below", "under"),
}
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}

_ONE_OBJECT_TEMPLATES = (
    "{o}",
    "{o} {p}",
    "there is {o} {p}",
    "a photo of {o}",
    "a picture of {o} {p}",
    "an image of {o}",
    "{o} on a noisy background",
    "{p} there is {o}",
)
_TWO_OBJECT_TEMPLATES = ("{a} {r} {b}", "{a} is {r} {b}", "there is {a} {r} {b}", "a photo of {a} {r} {b}")
_THREE_OBJECT_PREFIXES = ("", "there is ", "a photo of ")

# Unrelated web-like alt text for caption noise.
_NOISE_TEMPLATES = (
    "click here for the best deals on {item}",
    "my holiday photos {year}",
    "buy cheap {item} online",
    "{item} for sale free shipping",
    "top ten {item} you need this year",
    "welcome to my blog about {item}",
    "best {item} of {year}",
    "sunset at the beach with friends",
    "happy birthday to my best friend",
    "subscribe to our newsletter for more {item}",
    "download the free app now",
    "view full size image",
    "untitled {year}",
)
_NOISE_FILLERS = {
    "item": ("shoes", "phones", "laptops", "watches", "bags", "cars", "recipes", "hotels"),
    "year": ("2015", "2016", "2017", "2018", "2019", "2020"),
}

QUESTION_TYPES = ("color", "count", "exists", "left_of")
NUMBERS = ("one", "two", "three")
_QUESTIONS = (
    "what color is the {}?",
    "what is the color of the {}?",
    "how many objects are there?",
    "how many shapes are in the image?",
    "is there a {}?",
    "what is to the left of the {}?",
)

PROMPT_WORDS = "question answer caption"  # the words of vljax.data.prompts' formats
MAX_CAPTION_WORDS = 22  # longest caption the world can produce; max_len = 24 holds any with BOS/EOS


def split_words(text: str) -> list[str]:
  """Words of a caption, prompt or question (or template, placeholders skipped); no punctuation."""
  return re.findall(r"[a-z0-9]+", re.sub(r"\{[a-z]*\}", " ", text.lower()))


def _build_vocab() -> tuple[str, ...]:
  texts = [*SHAPES, *COLORS, *SIZES, *(p for row in POSITIONS for p in row), "corner middle an"]
  texts += [p for ps in RELATIONS.values() for p in ps]
  texts += [*PROMPT_TEMPLATES, *_ONE_OBJECT_TEMPLATES, *_TWO_OBJECT_TEMPLATES, *_THREE_OBJECT_PREFIXES]
  texts += ["in the at on and is"]
  texts += [*_NOISE_TEMPLATES, *(w for ws in _NOISE_FILLERS.values() for w in ws)]
  texts += [*_QUESTIONS, *NUMBERS, "yes no", PROMPT_WORDS]
  vocab: dict[str, None] = {}
  for text in texts:
    vocab.update(dict.fromkeys(split_words(text)))
  return tuple(vocab)


VOCAB = _build_vocab()


# ---------------------------------------------------------------------------- geometry

def _regular(n: int, radius: float = 1.0, phase: float = -np.pi / 2) -> np.ndarray:
  t = phase + 2 * np.pi * np.arange(n) / n
  return radius * np.stack([np.cos(t), np.sin(t)], -1)


def _unit_polygons() -> dict[str, np.ndarray]:
  """Shapes as polygons in [-1, 1]^2 (y down), roughly filling the unit box."""
  star = _regular(10)
  star[1::2] *= 0.42
  star[:, 1] += 0.1  # center the star's bounding box
  a = 0.34
  cross = np.array([(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1),
                    (-a, a), (-1, a), (-1, -a), (-a, -a)])
  t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
  heart = np.stack([16 * np.sin(t) ** 3,
                    -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))], -1)
  heart -= (heart.max(0) + heart.min(0)) / 2
  heart /= np.abs(heart).max(0)
  return {
      "circle": _regular(32),
      "square": np.array([(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)]),
      "triangle": np.array([(0.0, -0.95), (1.0, 0.8), (-1.0, 0.8)]),
      "star": star,
      "cross": cross,
      "heart": heart * 0.95,
      "hexagon": _regular(6, phase=0.0),
      "diamond": np.array([(0.0, -1.0), (0.7, 0.0), (0.0, 1.0), (-0.7, 0.0)]),
  }


_POLYGONS = _unit_polygons()


def _textures(rng: np.random.Generator, size: int, count: int = 8) -> np.ndarray:
  """Smooth gray textures in [-1, 1] of twice the image size, to crop backgrounds from."""
  tiles = []
  for _ in range(count):
    coarse = rng.standard_normal((rng.integers(3, 9),) * 2).astype(np.float32)
    smooth = np.asarray(Image.fromarray(coarse).resize((2 * size, 2 * size), Image.BICUBIC))
    ramp = np.linspace(-1, 1, 2 * size, dtype=np.float32)
    smooth = smooth + rng.uniform(-1, 1) * ramp[None, :] + rng.uniform(-1, 1) * ramp[:, None]
    tiles.append(smooth / (np.abs(smooth).max() + 1e-6))
  return np.stack(tiles)


# ---------------------------------------------------------------------------- language

def _article(word: str) -> str:
  return "an" if word[0] in "aeiou" else "a"


def noun_phrase(obj: dict, with_size: bool) -> str:
  words = ([obj["size"]] if with_size else []) + [obj["color"], obj["shape"]]
  return " ".join([_article(words[0])] + words)


def _position_phrase(row: int, col: int, rng: np.random.Generator) -> str:
  name = POSITIONS[row][col]
  if name == "center":
    return "in the " + ("center", "middle")[rng.integers(2)]
  if " " in name:  # a corner
    return "in the " + name + ("", " corner")[rng.integers(2)]
  return ("at the " if name in ("top", "bottom") else "on the ") + name


def relation(a: dict, b: dict) -> list[str]:
  """Relations that hold for object `a` relative to object `b` (grid cells)."""
  rels = []
  if a["col"] != b["col"]:
    rels.append("left" if a["col"] < b["col"] else "right")
  if a["row"] != b["row"]:
    rels.append("above" if a["row"] < b["row"] else "below")
  return rels


def color_shape_pairs(text: str) -> list[tuple[str, str]]:
  """Every "COLOR SHAPE" said in `text` ("a small red circle" -> ("red", "circle"))."""
  words = split_words(text)
  return [(c, s) for c, s in zip(words, words[1:]) if c in COLORS and s in SHAPES]


def fill_prompt(template: str, class_name: str) -> str:
  """`template.format(class_name)` with "a"/"an" agreeing, as in the training captions."""
  text = template.format(class_name)
  return re.sub(r"\ba ([aeiou])", r"an \1", text)


# ---------------------------------------------------------------------------- the world

# What an example's "image" holds: pixels, None (text-only use), or the Sketch of its pixels.
RENDER_MODES = (True, False, "sketch")


class Sketch(NamedTuple):
  """One image's random draws and object coverage (ShapesWorld.sketch), before its pixels."""
  texture: int  # which background texture, and where it is cropped
  texture_at: tuple[int, int]
  gray: np.float32  # background brightness, its texture's contrast, a per-channel tint
  contrast: np.float32
  tint: np.ndarray  # float32[3]
  coverage: np.ndarray  # uint8[H, W]: 255 inside an object, antialiased at its edges
  palette: np.ndarray  # float32[9, 3]: the object color of each grid cell
  noise: int  # which pixel-noise tile, and where it is cropped
  noise_at: tuple[int, int]
  boxes: tuple = ()  # each object's box (x0, y0, x1, y1), normalized to [0, 1], in the objects' order


# Images painted together: big enough for whole-array operations, small enough for the CPU's cache.
_PAINT_CHUNK = 32


class ShapesWorld:
  """Procedural image-text world; every method is a pure function of (seed, index)."""

  def __init__(self, seed: int = 0, image_size: int = 64, caption_noise: float = 0.0,
               min_objects: int = 1, max_objects: int = 3):
    if image_size < 16:
      raise ValueError(f"image_size={image_size} is too small to draw shapes; use >= 16.")
    if not 0.0 <= caption_noise <= 1.0:
      raise ValueError(f"caption_noise={caption_noise} must be a fraction in [0, 1].")
    if not 1 <= min_objects <= max_objects <= 3:
      raise ValueError(f"need 1 <= min_objects <= max_objects <= 3, got {min_objects}, {max_objects}.")
    self.seed, self.image_size, self.caption_noise = int(seed), int(image_size), float(caption_noise)
    self.min_objects, self.max_objects = min_objects, max_objects
    # Fixed per world, so backgrounds cost a crop and a tint rather than a noise synthesis.
    rng = np.random.default_rng([self.seed, 2**16])
    self._textures = _textures(rng, self.image_size)
    cells = ((np.arange(self.image_size) + 0.5) * 3 / self.image_size).astype(np.int64)  # pixel centers
    self._cell_pixels = np.bincount(cells, minlength=3)  # pixels per grid row (and column)
    self._noise = rng.normal(0, 7, (4, 2 * self.image_size, 2 * self.image_size, 3)).astype(np.float32)

  def _rng(self, stream: int, index: int) -> np.random.Generator:
    if index < 0:
      raise IndexError(f"index must be >= 0, got {index}.")
    return np.random.default_rng([self.seed, stream, int(index)])

  # -- scenes and pixels

  def _scene(self, rng: np.random.Generator, n: int, distinct: bool = False,
             cells: Sequence[int] | None = None) -> list[dict]:
    """n objects in distinct cells; `distinct` also makes shapes and colors all differ."""
    cells = rng.choice(9, n, replace=False) if cells is None else cells
    if distinct:
      shapes, colors = rng.choice(len(SHAPES), n, replace=False), rng.choice(len(COLORS), n, replace=False)
    else:
      shapes, colors = rng.integers(len(SHAPES), size=n), rng.integers(len(COLORS), size=n)
    sizes = rng.integers(2, size=n)
    return [dict(shape=SHAPES[s], color=COLOR_NAMES[c], size=SIZES[z], row=int(k) // 3, col=int(k) % 3)
            for s, c, z, k in zip(shapes, colors, sizes, cells)]

  def render(self, objects: Sequence[dict], rng: np.random.Generator) -> np.ndarray:
    """uint8[H, W, 3]: textured noisy background with the objects drawn on it."""
    return self.paint([self.sketch(objects, rng)])[0]

  def sketch(self, objects: Sequence[dict], rng: np.random.Generator) -> Sketch:
    """Everything an image draws from its rng, and its objects' coverage; `paint` makes the pixels.

    Split so that a batch's pixels are computed in whole-batch array operations (a fraction of the
    per-image cost, with numpy free of the GIL) while each image stays a function of its own rng.
    """
    s = self.image_size
    ox, oy, nx, ny = rng.integers(0, s, 4)
    gray, contrast = rng.uniform(90, 160), rng.uniform(8, 25)
    tint = rng.uniform(-8, 8, 3).astype(np.float32)
    texture = int(rng.integers(len(self._textures)))
    # Object coverage is drawn `ss` times larger and box-filtered down: antialiased edges
    # keep small shapes (~10 px) recognisable. Objects stay inside their own grid cell,
    # so each pixel's object color is a lookup of its cell.
    ss = max(1, min(4, 256 // s))
    mask = Image.new("L", (s * ss, s * ss))
    draw = ImageDraw.Draw(mask)
    palette = np.zeros((9, 3), np.float32)
    cell = s / 3
    boxes = []
    for obj in objects:
      radius = SIZE_FRACTION[obj["size"]] * rng.uniform(0.9, 1.05) * cell / 2
      slack = max(cell / 2 - radius - 1, 0.0) * 0.8
      cx, cy = (obj["col"] + 0.5) * cell, (obj["row"] + 0.5) * cell
      cx, cy = cx + rng.uniform(-slack, slack), cy + rng.uniform(-slack, slack)
      palette[obj["row"] * 3 + obj["col"]] = np.array(COLORS[obj["color"]]) + rng.integers(-18, 19, 3)
      points = _POLYGONS[obj["shape"]] * radius + (cx, cy)
      draw.polygon((points * ss).ravel().tolist(), fill=255)
      boxes.append(tuple(float(v) for v in np.clip(np.concatenate([points.min(0), points.max(0)]) / s, 0.0, 1.0)))
    coverage = np.asarray(mask.reduce(ss))
    noise = int(rng.integers(len(self._noise)))
    return Sketch(texture, (int(oy), int(ox)), np.float32(gray), np.float32(contrast), tint, coverage, palette,
                  noise, (int(ny), int(nx)), tuple(boxes))

  def paint(self, sketches: Sequence[Sketch]) -> np.ndarray:
    """uint8[N, H, W, 3], the images of `sketches` (each as `render` would make it alone)."""
    s = self.image_size
    if any(sk.coverage.shape != (s, s) for sk in sketches):
      raise ValueError(f"paint: sketches of another image size than this world's {s}.")
    out = np.empty((len(sketches), s, s, 3), np.uint8)
    for start in range(0, len(sketches), _PAINT_CHUNK):
      out[start:start + _PAINT_CHUNK] = self._paint(sketches[start:start + _PAINT_CHUNK])
    return out

  def _paint(self, sketches: Sequence[Sketch]) -> np.ndarray:
    s = self.image_size
    tex = np.stack([self._textures[sk.texture, y:y + s, x:x + s] for sk in sketches for y, x in [sk.texture_at]])
    noise = np.stack([self._noise[sk.noise, y:y + s, x:x + s] for sk in sketches for y, x in [sk.noise_at]])
    gray = np.array([sk.gray for sk in sketches], np.float32)[:, None, None, None]
    contrast = np.array([sk.contrast for sk in sketches], np.float32)[:, None, None, None]
    tint = np.stack([sk.tint for sk in sketches])[:, None, None, :]
    bg = gray + contrast * tex[..., None] + tint
    alpha = np.stack([sk.coverage for sk in sketches]).astype(np.float32)[..., None] * np.float32(1 / 255)
    # Each pixel's object color is its grid cell's: the 3x3 palette repeated over the cells' pixels.
    palette = np.stack([sk.palette for sk in sketches]).reshape(-1, 3, 3, 3)
    color = palette.repeat(self._cell_pixels, axis=1).repeat(self._cell_pixels, axis=2)
    return np.clip(bg + alpha * (color - bg) + noise, 0, 255).astype(np.uint8)

  # -- captions

  def _caption(self, objects: list[dict], rng: np.random.Generator) -> str:
    n = len(objects)
    phrases = [noun_phrase(o, with_size=rng.random() < 0.6) for o in objects]
    if n == 1:
      template = _ONE_OBJECT_TEMPLATES[rng.integers(len(_ONE_OBJECT_TEMPLATES))]
      return template.format(o=phrases[0], p=_position_phrase(objects[0]["row"], objects[0]["col"], rng))
    order = rng.permutation(n)
    a, b = objects[order[0]], objects[order[1]]
    pa, pb = phrases[order[0]], phrases[order[1]]
    rels = relation(a, b)
    rel = rels[rng.integers(len(rels))]
    rel_phrase = RELATIONS[rel][rng.integers(len(RELATIONS[rel]))]
    if n == 2:
      template = _TWO_OBJECT_TEMPLATES[rng.integers(len(_TWO_OBJECT_TEMPLATES))]
      return template.format(a=pa, r=rel_phrase, b=pb)
    c, pc = objects[order[2]], phrases[order[2]]
    if rel in relation(a, c):  # "a left of b and c" only when it is true of c too
      prefix = _THREE_OBJECT_PREFIXES[rng.integers(len(_THREE_OBJECT_PREFIXES))]
      return f"{prefix}{pa} {rel_phrase} {pb} and {pc}"
    # No prefix here keeps the longest caption at MAX_CAPTION_WORDS.
    return f"{pa} {rel_phrase} {pb} and {pc} {_position_phrase(c['row'], c['col'], rng)}"

  @staticmethod
  def _noise_caption(rng: np.random.Generator) -> str:
    template = _NOISE_TEMPLATES[rng.integers(len(_NOISE_TEMPLATES))]
    fill = {k: v[rng.integers(len(v))] for k, v in _NOISE_FILLERS.items()}
    return template.format(**fill)

  # -- public examples

  def _image(self, objects: Sequence[dict], rng: np.random.Generator, render: bool | str):
    return self._sketch_and_image(objects, rng, render)[1]

  def _sketch_and_image(self, objects: Sequence[dict], rng: np.random.Generator, render: bool | str):
    """(the Sketch or None, the image as `render` asks)."""
    if render not in RENDER_MODES:
      raise ValueError(f"render={render!r} is not one of {RENDER_MODES}.")
    if not render:
      return None, None
    sketch = self.sketch(objects, rng)  # the same draws as render(): render = paint(sketch)
    return sketch, (sketch if render == "sketch" else self.paint([sketch])[0])

  def example(self, index: int, split: str = "train", render: bool | str = True, boxes: bool = False) -> dict:
    """dict(image=uint8[H, W, 3], caption=str, objects=[dict(shape, color, size, row, col)], noisy).

    render=False skips the pixels (image None) for text-only use; the rng then draws the caption
    from another point of the stream, so the text is not that of the rendered example.
    render="sketch": image is the Sketch that `paint` turns into the same pixels (in batches).
    boxes=True (needs render): also "boxes", float32 [objects, 4], each object's tight box
    (x0, y0, x1, y1) normalized to [0, 1]; the example is otherwise the same.
    """
    if split not in SPLITS:
      raise ValueError(f"split={split!r} is not one of {sorted(SPLITS)}.")
    if boxes and not render:
      raise ValueError("example(boxes=True) needs an image: render=True or 'sketch'")
    rng = self._rng(SPLITS[split], index)
    objects = self._scene(rng, int(rng.integers(self.min_objects, self.max_objects + 1)))
    sketch, image = self._sketch_and_image(objects, rng, render)
    caption = self._caption(objects, rng)
    # Drawn always, so images and clean captions do not depend on the noise level.
    noisy = bool(rng.random() < self.caption_noise)
    if noisy:
      caption = self._noise_caption(rng)
    if boxes:
      return dict(image=image, caption=caption, objects=objects, noisy=noisy,
                  boxes=np.asarray(sketch.boxes, np.float32).reshape(-1, 4))
    return dict(image=image, caption=caption, objects=objects, noisy=noisy)

  def retrieval_example(self, index: int) -> dict:
    return self.example(index, split="eval")

  def caption_example(self, index: int, num_references: int = 5) -> dict:
    """An eval-split example with `num_references` clean captions of its scene, each drawn
    independently (templates, paraphrases, which sizes are said), for captioning metrics."""
    ex = self.example(index, split="eval")
    refs = [self._caption(ex["objects"], np.random.default_rng([self.seed, _CAPTION_STREAM, int(index), k]))
            for k in range(num_references)]
    return dict(image=ex["image"], references=refs, objects=ex["objects"])

  def zeroshot_classes(self) -> list[str]:
    """Class names in label order: label = color_index * len(SHAPES) + shape_index."""
    return [f"{c} {s}" for c in COLORS for s in SHAPES]

  def zeroshot_example(self, index: int) -> dict:
    """Held-out single-object image; classes cycle with the index so any range is balanced."""
    rng = self._rng(_ZEROSHOT_STREAM, index)
    label = index % (len(COLORS) * len(SHAPES))
    color, shape = COLOR_NAMES[label // len(SHAPES)], SHAPES[label % len(SHAPES)]
    cell = int(rng.integers(9))
    obj = dict(shape=shape, color=color, size=SIZES[rng.integers(2)], row=cell // 3, col=cell % 3)
    return dict(image=self.render([obj], rng), label=label, color=color, shape=shape)

  def binding_example(self, index: int) -> dict:
    """Two objects with different colors and shapes: dict(image, caption, attribute_swapped,
    relation_swapped, objects); the three captions share one template."""
    rng = self._rng(_BINDING_STREAM, index)
    a, b = self._scene(rng, 2, distinct=True)
    image = self.render([a, b], rng)
    rel = relation(a, b)[0]  # left/right when columns differ, else above/below

    def caption(x: dict, y: dict, r: str) -> str:
      return f"{noun_phrase(x, False)} {RELATIONS[r][0]} {noun_phrase(y, False)}"

    swapped_a, swapped_b = dict(a, color=b["color"]), dict(b, color=a["color"])
    return dict(image=image, caption=caption(a, b, rel),
                attribute_swapped=caption(swapped_a, swapped_b, rel),
                relation_swapped=caption(a, b, OPPOSITE[rel]), objects=[a, b])

  def vqa_example(self, index: int, split: str = "eval", render: bool | str = True) -> dict:
    """dict(image, question, answer, question_type, objects); types cycle with the index and
    "is there" answers alternate yes/no, so any index range is balanced. render=False: as example()."""
    if split not in SPLITS:
      raise ValueError(f"split={split!r} is not one of {sorted(SPLITS)}.")
    rng = self._rng(_VQA_STREAM if split == "eval" else _VQA_TRAIN_STREAM, index)
    qtype = QUESTION_TYPES[index % len(QUESTION_TYPES)]
    if qtype == "left_of":
      row_a, row_b = rng.integers(3, size=2)
      col_a, col_b = sorted(rng.choice(3, 2, replace=False))
      objects = self._scene(rng, 2, distinct=True, cells=[row_a * 3 + col_a, row_b * 3 + col_b])
    else:
      objects = self._scene(rng, int(rng.integers(1, 4)), distinct=True)
    image = self._image(objects, rng, render)
    question, answer = _ask(qtype, objects, rng, yes=(index // len(QUESTION_TYPES)) % 2 == 0)
    return dict(image=image, question=question, answer=answer, question_type=qtype, objects=objects)

  def conversation_example(self, index: int, split: str = "train", render: bool | str = True) -> dict:
    """dict(image, conversation=[(role, text), ...], objects): a user asks for the scene's description
    (answered by one of its captions), then 1 or 2 questions of CONVERSATION_QUESTION_TYPES about the
    same scene, each answered: visual instruction data as LLaVA's stage 2 trains on, in the world's words."""
    if split not in SPLITS:
      raise ValueError(f"split={split!r} is not one of {sorted(SPLITS)}.")
    rng = self._rng(_CONVERSATION_STREAM if split == "eval" else _CONVERSATION_TRAIN_STREAM, index)
    objects = self._scene(rng, int(rng.integers(self.min_objects, self.max_objects + 1)), distinct=True)
    image = self._image(objects, rng, render)
    turns = [("user", DESCRIBE_REQUESTS[int(rng.integers(len(DESCRIBE_REQUESTS)))]),
             ("assistant", self._caption(objects, rng))]
    for qtype in rng.choice(CONVERSATION_QUESTION_TYPES, int(rng.integers(1, 3)), replace=False):
      question, answer = _ask(str(qtype), objects, rng, yes=bool(rng.integers(2)))
      turns += [("user", question), ("assistant", answer)]
    return dict(image=image, conversation=turns, objects=objects)


def object_records(example: dict) -> list[dict]:
  """An example's objects as boxes with their texts, the record field real data gives them in
  (vljax/data/boxes.py): [{"box": (x0, y0, x1, y1) in [0, 1], "text": "a large red circle"}, ...]."""
  return [{"box": tuple(float(v) for v in box), "text": noun_phrase(obj, with_size=True)}
          for obj, box in zip(example["objects"], example["boxes"])]


def _ask(qtype: str, objects: list[dict], rng: np.random.Generator, yes: bool) -> tuple[str, str]:
  """(question, answer) of type `qtype` about the scene; "exists" asks about a present shape when `yes`."""
  paraphrase = int(rng.integers(2))
  target = objects[rng.integers(len(objects))]
  if qtype == "color":
    return _QUESTIONS[paraphrase].format(target["shape"]), target["color"]
  if qtype == "count":
    return _QUESTIONS[2 + paraphrase], NUMBERS[len(objects) - 1]
  if qtype == "exists":
    present = {o["shape"] for o in objects}
    pool = sorted(present) if yes else [s for s in SHAPES if s not in present]
    return _QUESTIONS[4].format(pool[rng.integers(len(pool))]), ("yes" if yes else "no")
  left, right = objects
  return _QUESTIONS[5].format(f"{right['color']} {right['shape']}"), f"{left['color']} {left['shape']}"


class ShapesSource:
  """grain random-access source over one split of a world: {"image": uint8, "caption": str}."""

  def __init__(self, world: ShapesWorld, split: str = "train", length: int = 2**31 - 1,
               vqa_fraction: float = 0.0, render: bool | str = True, start: int = 0,
               conversation_fraction: float = 0.0, boxes: bool = False):
    """`start`: the split's index that this source's index 0 reads (runs of another seed read
    another stretch of the same infinite split: other training data, the same world). `boxes`:
    caption examples also hold their objects' boxes and texts and a seed (object_records)."""
    if split not in SPLITS:
      raise ValueError(f"split={split!r} is not one of {sorted(SPLITS)}.")
    for name, value in (("vqa_fraction", vqa_fraction), ("conversation_fraction", conversation_fraction)):
      if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value} must be a fraction in [0, 1].")
    if vqa_fraction + conversation_fraction > 1.0:
      raise ValueError(f"vqa_fraction={vqa_fraction} + conversation_fraction={conversation_fraction} exceeds 1: "
                       "they are shares of one stream (the rest are captions)")
    self.world, self.split, self._length, self.vqa_fraction = world, split, length, vqa_fraction
    self.conversation_fraction = conversation_fraction
    self.render, self.start, self.boxes = render, int(start), bool(boxes)
    if self.boxes and (vqa_fraction or conversation_fraction or not render):
      raise ValueError("ShapesSource(boxes=True) gives caption examples with images: vqa_fraction and "
                       "conversation_fraction 0, render True or 'sketch'")
    if self.start < 0:
      raise ValueError(f"start={start} must be >= 0.")

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> dict:
    """{"image", "caption"}, or with probability vqa_fraction {"image", "question", "answer"}, or with
    probability conversation_fraction {"image", "conversation"}."""
    index = self.start + int(index)
    # The choice is a pure function of the index too, so resumed runs see the same stream.
    if self.vqa_fraction or self.conversation_fraction:
      draw = np.random.default_rng([self.world.seed, _KIND_STREAM, index]).random()
      if draw < self.vqa_fraction:
        ex = self.world.vqa_example(index, self.split, render=self.render)
        return {"image": ex["image"], "question": ex["question"], "answer": ex["answer"]}
      if draw < self.vqa_fraction + self.conversation_fraction:
        ex = self.world.conversation_example(index, self.split, render=self.render)
        return {"image": ex["image"], "conversation": ex["conversation"]}
    if self.boxes:
      ex = self.world.example(index, self.split, render=self.render, boxes=True)
      seed = int(np.random.default_rng([self.world.seed, _LOCCA_STREAM, index]).integers(2**62))
      return {"image": ex["image"], "caption": ex["caption"], "objects": object_records(ex), "seed": seed}
    ex = self.world.example(index, self.split, render=self.render)
    return {"image": ex["image"], "caption": ex["caption"]}

  def __repr__(self) -> str:
    return (f"ShapesSource(seed={self.world.seed}, split={self.split!r}, image_size={self.world.image_size}, "
            f"vqa_fraction={self.vqa_fraction}, conversation_fraction={self.conversation_fraction}, "
            f"render={self.render}, start={self.start})")
