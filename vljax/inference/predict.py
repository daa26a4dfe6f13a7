"""`python -m vljax.predict --workdir DIR --images FILE... [--classes NAME,...] [--prompt TEXT] [--method beam ...]`

Prints one line per image: its caption (models with a caption decoder) and, given --classes,
its zero-shot label with the probability. With --prompt (LLaVA, BLIP-2, Flamingo, or a text-only
LM without --images), the prompt's continuation instead of the caption: one per image, or one for
all the images when the prompt holds several "<image>" (an interleaved prompt); --max_len caps it.
"""

from __future__ import annotations

import argparse
import sys

from vljax import decode as decode_lib
from vljax.data import prompts
from vljax.inference.predictor import load
from vljax.models import capabilities


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m vljax.predict", description=__doc__.split("\n\n")[1])
  parser.add_argument("--workdir", required=True, help="a vljax run directory (config.json, checkpoints/)")
  parser.add_argument("--images", nargs="+", default=[], help="image files (none: a text-only LM with --prompt)")
  parser.add_argument("--prompt", default=None, help="text to continue, '<image>' where an image goes")
  parser.add_argument("--classes", default="", help="comma-separated class names for zero-shot labels")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  parser.add_argument("--seed", type=int, default=0, help="rng seed for --method sample")
  defaults = decode_lib.DecodeOptions()
  for field in ("method", "beam_size", "length_penalty", "min_len", "max_len", "temperature", "top_k", "top_p"):
    value = getattr(defaults, field)
    parser.add_argument(f"--{field}", type=type(value), default=None, help=f"decoding option (default {value})")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  options = {k: v for k, v in vars(args).items()
             if k in decode_lib.DecodeOptions.__dataclass_fields__ and v is not None}
  classes = [c.strip() for c in args.classes.split(",") if c.strip()]
  if args.prompt is not None:
    return _answer_prompt(args, options)
  if not args.images:
    print("error: --images is required (only a text-only LM with --prompt takes none)", file=sys.stderr)
    return 2
  try:
    model = load(args.workdir, args.step)
    can_caption = capabilities.GENERATION in model.runner.capabilities
    if not can_caption and not classes:
      raise ValueError(f"the model in {args.workdir!r} has no caption decoder; pass --classes for zero-shot labels")
    if classes:  # before any captioning: a model that cannot score fails now, naming what it can do
      model.runner.resolve_scoring("auto")
    captions = model.caption(args.images, seed=args.seed, **options) if can_caption else None
    labels = model.zero_shot(args.images, classes) if classes else None
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for i, path in enumerate(args.images):
    parts = [path]
    if captions is not None:
      parts.append(f"caption: {captions[i]}")
    if labels is not None:
      names, probs = labels
      parts.append(f"label: {names[i]} ({probs[i].max():.2f})")
    print("\t".join(parts))
  return 0


def _answer_prompt(args: argparse.Namespace, options: dict) -> int:
  """--prompt: one continuation per image (all images in one prompt with several <image>)."""
  options = dict(options)
  max_new_tokens = options.pop("max_len", 16)
  together = args.prompt.count(prompts.IMAGE) > 1
  groups = [args.images] if together else [[path] for path in args.images]
  try:
    model = load(args.workdir, args.step)
    images = (groups if together else args.images) if args.images else None
    answers = model.generate(images, [args.prompt] * max(len(groups), 1), seed=args.seed,
                             max_new_tokens=max_new_tokens, **options)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for group, answer in zip(groups or [[]], answers):
    print("\t".join([",".join(group)] if group else []) + ("\t" if group else "") + f"answer: {answer}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
