"""Whether a text describes a shapes-world scene: every caption the world itself could write for it.

The world's captions come from a small grammar (vljax/data/shapes.py: templates x paraphrases x
which sizes are said x object order x the relations that hold), so the captions of one scene can be
listed (at most a few hundred for three objects). A caption is correct when it is one of them: a
synthetic caption that names a wrong colour, shape, size, position or relation, or leaves an object
out, is not. Listed here by following `ShapesWorld._caption` branch by branch; tests check that
every caption the world draws is in the list.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

from vljax.data import shapes

# The world's caption grammar (private to shapes.py, which has no listing of its own).
ONE_OBJECT_TEMPLATES = shapes._ONE_OBJECT_TEMPLATES
TWO_OBJECT_TEMPLATES = shapes._TWO_OBJECT_TEMPLATES
THREE_OBJECT_PREFIXES = shapes._THREE_OBJECT_PREFIXES


def normalize(text: str) -> str:
  """Words only, single spaces: how captions compare (a decoder's output has no punctuation)."""
  return " ".join(shapes.split_words(text))


def position_phrases(row: int, col: int) -> tuple[str, ...]:
  """Every phrase the world says for a grid cell (shapes._position_phrase's paraphrases)."""
  name = shapes.POSITIONS[row][col]
  if name == "center":
    return "in the center", "in the middle"
  if " " in name:
    return f"in the {name}", f"in the {name} corner"
  return (("at the " if name in ("top", "bottom") else "on the ") + name,)


def _phrases(obj: dict) -> tuple[str, str]:
  return shapes.noun_phrase(obj, True), shapes.noun_phrase(obj, False)


def _one(obj: dict) -> set[str]:
  return {t.format(o=o, p=p) for t in ONE_OBJECT_TEMPLATES for o in _phrases(obj)
          for p in position_phrases(obj["row"], obj["col"])}


def _several(objects: Sequence[dict]) -> set[str]:
  out = set()
  for order in itertools.permutations(range(len(objects))):
    a, b = objects[order[0]], objects[order[1]]
    for rel in shapes.relation(a, b):
      for r, pa, pb in itertools.product(shapes.RELATIONS[rel], _phrases(a), _phrases(b)):
        if len(objects) == 2:
          out.update(t.format(a=pa, r=r, b=pb) for t in TWO_OBJECT_TEMPLATES)
          continue
        c = objects[order[2]]
        for pc in _phrases(c):
          if rel in shapes.relation(a, c):
            out.update(f"{prefix}{pa} {r} {pb} and {pc}" for prefix in THREE_OBJECT_PREFIXES)
          else:
            out.update(f"{pa} {r} {pb} and {pc} {p}" for p in position_phrases(c["row"], c["col"]))
  return out


def world_captions(objects: Sequence[dict]) -> frozenset[str]:
  """Every caption (normalised) the world could write for a scene of 1-3 objects."""
  key = tuple((o["shape"], o["color"], o["size"], o["row"], o["col"]) for o in objects)
  return _world_captions(key)


@functools.lru_cache(maxsize=4096)
def _world_captions(key: tuple) -> frozenset[str]:
  objects = [dict(zip(("shape", "color", "size", "row", "col"), k)) for k in key]
  if not 1 <= len(objects) <= 3:
    raise ValueError(f"a shapes scene has 1 to 3 objects, got {len(objects)}")
  texts = _one(objects[0]) if len(objects) == 1 else _several(objects)
  return frozenset(normalize(t) for t in texts)


def describes(caption: str, objects: Sequence[dict]) -> bool:
  """Whether `caption` is a caption the world could write for the scene."""
  return normalize(caption) in world_captions(objects)


def names_the_objects(caption: str, objects: Sequence[dict]) -> bool:
  """A looser check: the caption's "COLOR SHAPE" pairs are exactly the scene's (sizes, positions and
  relations not checked)."""
  return sorted(shapes.color_shape_pairs(caption)) == sorted((o["color"], o["shape"]) for o in objects)


def names_the_colors(caption: str, objects: Sequence[dict]) -> bool:
  """Looser still: the colours of its "COLOR SHAPE" pairs are the scene's (whatever the shapes)."""
  return sorted(c for c, _ in shapes.color_shape_pairs(caption)) == sorted(o["color"] for o in objects)
