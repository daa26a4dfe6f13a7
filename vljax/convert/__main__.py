"""`python -m vljax.convert --checkpoint PATH --workdir OUT [--format F] [--image_size N] [--tokenizer SPEC]
[--config CONFIG.py[:ARG]]`

Converts CLIP / SigLIP / BLIP weights (Hugging Face BlipForImageTextRetrieval, BlipForConditionalGeneration:
vljax.convert.hf_blip), a Hugging Face decoder-only language model folder (GPT-2, OPT, Llama, Mistral,
Qwen2: vljax.convert.hf_lm) or a T5 / FlanT5 folder (vljax.convert.hf_t5), into a vljax workdir that
`vljax.load(OUT)` opens and a training config starts from with `--config.init_from.workdir=OUT`. With
--config, the weights are fitted to that recipe (its tokenizer, image size, text length, scan) and checked
against its model.
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m vljax.convert", description=__doc__.split("\n\n")[1])
  parser.add_argument("--checkpoint", required=True,
                      help="a .pt/.pth/.bin/.safetensors/.npz file or a Hugging Face model folder (CLIP, SigLIP, "
                           "BLIP, a decoder-only LM or T5)")
  parser.add_argument("--workdir", required=True, help="the vljax workdir to write (config.json, checkpoints/)")
  parser.add_argument("--format", default=None,
                      help="openai_clip, hf_clip, hf_siglip, big_vision_siglip, hf_blip, hf_lm or hf_t5 "
                           "(default: detected)")
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
  from vljax.convert import fit, hf_lm, hf_t5

  if args.format == "hf_lm" or (args.format is None and hf_lm.is_lm_folder(args.checkpoint)):
    return convert_lm(args)
  if args.format == "hf_t5" or (args.format is None and hf_t5.is_t5_folder(args.checkpoint)):
    return convert_lm(args, hf_t5.import_t5, hf_t5.write_workdir)
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


def convert_lm(args: argparse.Namespace, import_fn=None, write_fn=None) -> int:
  """A language model folder -> a workdir (the image options do not apply): decoder-only by default (hf_lm:
  an `lm` workdir), T5 with hf_t5's import_t5 and write_workdir (a `seq2seq_lm` workdir)."""
  from vljax.convert import hf_lm

  import_fn, write_fn = import_fn or hf_lm.import_lm, write_fn or hf_lm.write_workdir
  ignored = [f"--{k}" for k in ("image_size", "activation", "input_normalization", "config") if getattr(args, k)]
  try:
    if ignored:
      raise ValueError(f"{ignored} do not apply to a language model import; valid: --tokenizer, --max_len")
    converted = import_fn(args.checkpoint, args.tokenizer)
    path = write_fn(converted, args.workdir, args.max_len)
  except (ValueError, FileNotFoundError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  data = converted.data
  model = converted.model_cfg
  s = model["lm"]
  print(f"wrote {path} and a step-0 checkpoint: {data['format']} -> {model['name']} of {s['depth']} layers, width "
        f"{s['width']}, vocab {s['vocab_size']}, max_len {s.get('max_len', data['max_len'])}, tokenizer "
        f"{data['tokenizer']!r}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
