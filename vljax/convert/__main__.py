"""`python -m vljax.convert --checkpoint PATH --workdir OUT [--format F] [--image_size N] [--tokenizer SPEC]
[--config CONFIG.py[:ARG]]`

Converts CLIP / SigLIP / BLIP weights (Hugging Face BlipForImageTextRetrieval, BlipForConditionalGeneration:
vljax.convert.hf_blip), or a Hugging Face decoder-only language model folder (GPT-2, OPT, Llama, Mistral,
Qwen2: vljax.convert.hf_lm), into a vljax workdir that `vljax.load(OUT)` opens and a training
config starts from with `--config.init_from.workdir=OUT`. With --config, the weights are fitted to
that recipe (its tokenizer, image size, text length, scan) and checked against its model.
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m vljax.convert", description=__doc__.split("\n\n")[1])
  parser.add_argument("--checkpoint", required=True,
                      help="a .pt/.pth/.bin/.safetensors/.npz file or a Hugging Face model folder (CLIP, SigLIP, "
                           "BLIP or a decoder-only LM)")
  parser.add_argument("--workdir", required=True, help="the vljax workdir to write (config.json, checkpoints/)")
  parser.add_argument("--format", default=None,
                      help="openai_clip, hf_clip, hf_siglip, big_vision_siglip, hf_blip or hf_lm (default: detected)")
  parser.add_argument("--image_size", type=int, default=None,
                      help="resample the image position embedding to this size (default: the checkpoint's)")
  parser.add_argument("--tokenizer", default=None,
                      help="vljax tokenizer spec, e.g. bpe:/path/bpe_simple_vocab_16e6.txt.gz (default: a Hugging "
                           "Face folder's own, else none and the format's id offset)")
  parser.add_argument("--max_len", type=int, default=None,
                      help="text positions to keep (default: all; hf_blip: 40 of BERT's 512)")
  parser.add_argument("--activation", default=None,
                      help="MLP activation, overriding the checkpoint's (open_clip models without QuickGELU: gelu)")
  parser.add_argument("--input_normalization", default=None,
                      help="normalisation preset of the images the model will get (default: the --config's "
                           "data.normalization, else siglip: [-1, 1])")
  parser.add_argument("--config", default=None, help="a training recipe to fit the weights to and check against")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  from vljax import convert
  from vljax.convert import fit, hf_lm

  if args.format == "hf_lm" or (args.format is None and hf_lm.is_lm_folder(args.checkpoint)):
    return convert_lm(args)
  try:
    config = fit.as_config(args.config) if args.config else None
    converted = convert.import_checkpoint(
        args.checkpoint, args.format, args.image_size, args.tokenizer, config=config, max_len=args.max_len,
        activation=args.activation, input_normalization=args.input_normalization)
    path = convert.write_workdir(converted, args.workdir, config)
  except (ValueError, FileNotFoundError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  model, data = converted.model_cfg, converted.data
  print(f"wrote {path} and a step-0 checkpoint: {data['format']} -> composable {convert.describe(model)}, "
        f"image_size {data['image_size']}, max_len {data['max_len']}, tokenizer {data['tokenizer']!r}")
  return 0


def convert_lm(args: argparse.Namespace) -> int:
  """A decoder-only LM folder -> an `lm` workdir (the image options do not apply)."""
  from vljax.convert import hf_lm

  ignored = [f"--{k}" for k in ("image_size", "activation", "input_normalization", "config") if getattr(args, k)]
  try:
    if ignored:
      raise ValueError(f"{ignored} do not apply to a language model import; valid: --tokenizer, --max_len")
    converted = hf_lm.import_lm(args.checkpoint, args.tokenizer)
    path = hf_lm.write_workdir(converted, args.workdir, args.max_len)
  except (ValueError, FileNotFoundError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  data = converted.data
  s = converted.model_cfg["lm"]
  print(f"wrote {path} and a step-0 checkpoint: {data['format']} -> lm of {s['depth']} layers, width "
        f"{s['width']}, vocab {s['vocab_size']}, max_len {s['max_len']}, tokenizer {data['tokenizer']!r}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
