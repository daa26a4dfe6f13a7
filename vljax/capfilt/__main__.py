"""`python -m vljax.capfilt --captioner RUN --filter RUN --input SOURCE --output DIR [...]`: see vljax/capfilt."""

from __future__ import annotations

import argparse
import sys

from vljax.capfilt import job as job_lib

DEFAULTS = job_lib.Settings("", "", "")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  from vljax import capfilt
  parser = argparse.ArgumentParser(prog="python -m vljax.capfilt", description=capfilt.__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--captioner", required=True, help="workdir of a run with a caption decoder")
  parser.add_argument("--filter", required=True, help="workdir of a run with an ITM head (may be the captioner's)")
  parser.add_argument("--input", required=True, help="tar shards (pattern or directory), a folder's .jsonl/.csv "
                      "index, or ArrayRecord files: what python -m vljax.data.convert reads, and its output")
  parser.add_argument("--output", required=True, help="directory for the new dataset (new, empty, or this job's)")
  parser.add_argument("--captions_per_image", type=int, default=DEFAULTS.captions_per_image,
                      help="synthetic captions sampled per image (%(default)s; 0: filter the web captions alone)")
  parser.add_argument("--top_p", type=float, default=DEFAULTS.top_p, help="nucleus mass (%(default)s)")
  parser.add_argument("--temperature", type=float, default=DEFAULTS.temperature, help="(%(default)s)")
  parser.add_argument("--max_len", type=int, default=DEFAULTS.max_len,
                      help="generated tokens, EOS included (0: the captioner's text max_len - 1)")
  parser.add_argument("--threshold", type=float, default=DEFAULTS.threshold,
                      help="a caption is kept when its ITM match probability is >= this (%(default)s)")
  parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="of the sampling (%(default)s)")
  parser.add_argument("--shard_size", type=int, default=DEFAULTS.shard_size,
                      help="images per output shard of a random-access input (%(default)s; tar: one per file)")
  parser.add_argument("--image_key", default=DEFAULTS.image_key, help="the image's column / record field")
  parser.add_argument("--caption_key", default=DEFAULTS.caption_key, help="the caption's column / field")
  parser.add_argument("--batch_size", type=int, default=64, help="images per model call and host (%(default)s)")
  parser.add_argument("--no_progress", action="store_true", help="no progress bar")
  parser.add_argument("--coordinator_address", default=None, help="multi-process: host:port of process 0 "
                      "(with --num_processes, --process_id); default: detect SLURM / TPU / env")
  parser.add_argument("--num_processes", type=int, default=None)
  parser.add_argument("--process_id", type=int, default=None)
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  settings = job_lib.Settings(**{f: getattr(args, f) for f in job_lib.Settings.__dataclass_fields__})
  try:
    from vljax.capfilt import pipeline
    from vljax.parallel import distributed
    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)  # before any backend use
    summary = pipeline.run(settings, args.output, args.batch_size, progress=not args.no_progress)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(job_lib.counts_table(summary))
  print(f"records: {summary['records']} kept pairs under {args.output} (summary.json, shard-*.jsonl)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
