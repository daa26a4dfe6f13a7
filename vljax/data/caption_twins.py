"""Hard-negative twins of a shapes caption (NegCLIP-style): the same words with the binding broken.

  attribute twin: the colors of the first two objects said swapped ("a red circle left of a blue
    star" -> "a blue circle left of a red star"); with equal colors their shapes swap; a caption of
    one object gets another color;
  relation twin: the relation said reversed ("left of" -> "right of", "under" -> "over").

A twin that cannot be written (one object has no relation; a noise caption names no object) is
None: the batch marks it missing rather than inventing a sentence.
"""

from __future__ import annotations

import re

from vljax.data import shapes

_RELATION = re.compile(r"\b(" + "|".join(sorted((re.escape(p) for ps in shapes.RELATIONS.values() for p in ps),
                                                 key=len, reverse=True)) + r")\b")
_PHRASE_TO_RELATION = {p: (rel, i) for rel, ps in shapes.RELATIONS.items() for i, p in enumerate(ps)}


def _objects(words: list[str]) -> list[int]:
  """Indices of the color word of every "COLOR SHAPE" said."""
  return [i for i in range(len(words) - 1) if words[i] in shapes.COLORS and words[i + 1] in shapes.SHAPES]


def _fix_articles(words: list[str]) -> list[str]:
  return [("an" if words[i + 1][0] in "aeiou" else "a") if w in ("a", "an") and i + 1 < len(words) else w
          for i, w in enumerate(words)]


def attribute_twin(caption: str) -> str | None:
  words = caption.split()
  found = _objects(words)
  if not found:
    return None
  if len(found) == 1:
    i = found[0]
    colors = shapes.COLOR_NAMES
    words[i] = colors[(colors.index(words[i]) + 1) % len(colors)]
    return " ".join(_fix_articles(words))
  i, j = found[:2]
  if words[i] != words[j]:
    words[i], words[j] = words[j], words[i]
  elif words[i + 1] != words[j + 1]:
    words[i + 1], words[j + 1] = words[j + 1], words[i + 1]
  else:
    return None  # two objects alike: no swap changes the meaning
  return " ".join(_fix_articles(words))


def relation_twin(caption: str) -> str | None:
  match = _RELATION.search(caption)
  if not match or len(_objects(caption.split())) < 2:
    return None
  rel, index = _PHRASE_TO_RELATION[match.group(1)]
  return caption[:match.start()] + shapes.RELATIONS[shapes.OPPOSITE[rel]][index] + caption[match.end():]


TWINS = {"attribute": attribute_twin, "relation": relation_twin}
