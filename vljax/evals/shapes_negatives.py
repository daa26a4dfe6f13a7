"""SugarCrepe's seven kinds of hard negative, written for the shapes world's two-object scenes.

Each binding scene ("a red circle left of a blue star") gets one negative of each kind, each false
of the image and each a fluent caption of the same template:
  replace_att  one object's color -> a color neither object has    ("a green circle left of ...")
  replace_obj  one object's shape -> a shape neither object has    ("a red cross left of ...")
  replace_rel  the relation -> one of the other axis that is false  ("a red circle above ...")
  swap_att     the two colors exchanged                            ("a blue circle left of a red star")
  swap_obj     the two shapes exchanged                            ("a red star left of a blue circle")
  add_att      the first object's size said wrong                  ("a large red circle left of ...")
  add_obj      an object that is not there added                   ("... and a green cross")
Unlike SugarCrepe's, they are written by rule, so no negative can be true of the image.
"""

from __future__ import annotations

from vljax.data import shapes

KINDS = ("replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj", "add_att", "add_obj")
_OTHER_AXIS = {"left": ("above", "below"), "right": ("above", "below"), "above": ("left", "right"),
               "below": ("left", "right")}


def _unused(names: tuple[str, ...], *used: str) -> str:
  return next(n for n in names if n not in used)


def negatives(example: dict) -> tuple[str, dict[str, str]]:
  """(the caption, {kind: its negative}) of a ShapesWorld.binding_example."""
  a, b = example["objects"]
  true_rels = shapes.relation(a, b)
  rel = true_rels[0]  # the one binding_example says

  def say(x: dict, y: dict, r: str = rel, x_size: bool = False) -> str:
    return f"{shapes.noun_phrase(x, x_size)} {shapes.RELATIONS[r][0]} {shapes.noun_phrase(y, False)}"

  absent = dict(color=_unused(shapes.COLOR_NAMES, a["color"], b["color"]),
                shape=_unused(shapes.SHAPES, a["shape"], b["shape"]))
  other_size = _unused(shapes.SIZES, a["size"])
  out = {
      "replace_att": say(dict(a, color=absent["color"]), b),
      "replace_obj": say(dict(a, shape=absent["shape"]), b),
      "replace_rel": say(a, b, _unused(_OTHER_AXIS[rel], *true_rels)),
      "swap_att": say(dict(a, color=b["color"]), dict(b, color=a["color"])),
      "swap_obj": say(dict(a, shape=b["shape"]), dict(b, shape=a["shape"])),
      "add_att": say(dict(a, size=other_size), b, x_size=True),
      "add_obj": f"{say(a, b)} and {shapes.noun_phrase(absent, False)}",
  }
  return say(a, b), out
