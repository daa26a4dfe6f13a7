"""Prompt templates for zero-shot classification: named sets, and checks on user-given ones.

  clip80: the 80 ImageNet templates of OpenAI's CLIP (Radford et al. 2021, the prompt
          engineering notebook), the usual prompt ensemble for reported ImageNet numbers.
  short:  the 7-template subset that notebook selected, nearly as good at a tenth of the cost.
  shapes: the shapes world's own templates (the default on shapes).
"""

from __future__ import annotations

from collections.abc import Sequence

from vljax.data import shapes

CLIP_IMAGENET_TEMPLATES = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

SHORT_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "clip80": CLIP_IMAGENET_TEMPLATES,
    "short": SHORT_TEMPLATES,
    "shapes": tuple(shapes.PROMPT_TEMPLATES),
}


def resolve_templates(spec: str | Sequence[str]) -> tuple[str, ...]:
  """A set name from TEMPLATE_SETS, or a list of templates that each hold one "{}"."""
  if isinstance(spec, str):
    if spec not in TEMPLATE_SETS:
      raise ValueError(f"Unknown template set {spec!r}; valid: {sorted(TEMPLATE_SETS)} or a list of "
                       "templates with \"{}\" where the class name goes")
    return TEMPLATE_SETS[spec]
  out = tuple(spec)
  if not out:
    raise ValueError("templates is an empty list; give a set name from "
                     f"{sorted(TEMPLATE_SETS)} or templates with \"{{}}\"")
  for t in out:
    if not isinstance(t, str) or t.count("{}") != 1 or _fails_format(t):
      raise ValueError(f"template {t!r} must be a string with exactly one \"{{}}\" (where the class name "
                       "goes) and no other braces, e.g. \"a photo of a {}.\"")
  return out


def _fails_format(template: str) -> bool:
  try:
    template.format("x")
  except (IndexError, KeyError, ValueError):
    return True
  return False


def fill(template: str, class_name: str) -> str:
  """The prompt as published templates are used: plain substitution, articles left as written."""
  return template.format(class_name)
