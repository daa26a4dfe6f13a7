"""`python -m vljax.search index|query ...`: see vljax/search."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from vljax.search import exact, query as query_lib
from vljax.search import index as index_lib

DEFAULTS = index_lib.Settings("", "", "")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  from vljax import search
  parser = argparse.ArgumentParser(prog="python -m vljax.search", description=search.__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  index = commands.add_parser("index", help="embed a folder of images or shapes:N into an index")
  index.add_argument("--workdir", required=True, help="a run with contrastive image and text embeddings")
  index.add_argument("--images", required=True, help="a directory of image files, or shapes:N (N shapes scenes)")
  index.add_argument("--index", required=True, help="directory of the index (new, empty, or this index's)")
  index.add_argument("--shard_size", type=int, default=DEFAULTS.shard_size, help="images per shard (%(default)s)")
  index.add_argument("--batch_size", type=int, default=DEFAULTS.batch_size, help="images per model call (%(default)s)")
  index.add_argument("--dtype", default=DEFAULTS.dtype, help="of the stored embeddings: float32 or float16 "
                     "(%(default)s)")
  index.add_argument("--no_progress", action="store_true", help="no progress bar")
  query = commands.add_parser("query", help="the indexed images closest to a text or an image")
  query.add_argument("--index", required=True, help="directory of a complete index")
  query.add_argument("text", nargs="?", default=None, help="the query text")
  query.add_argument("--image", default=None, help="an image file to query with instead of a text")
  query.add_argument("-k", type=int, default=10, help="hits to return (%(default)s)")
  query.add_argument("--sheet", default=None, help="contact sheet PNG (default: INDEX.sheet.png)")
  query.add_argument("--chunk_rows", type=int, default=exact.CHUNK_ROWS,
                     help="index rows scored at once (%(default)s): memory, not results")
  return parser.parse_args(argv)


def _index(args: argparse.Namespace) -> str:
  settings = index_lib.Settings(args.workdir, args.images, args.index, args.shard_size, args.batch_size, args.dtype)
  manifest = index_lib.run(settings, progress=not args.no_progress)
  skipped = manifest["skipped"]
  return (f"indexed {manifest['count']} of {manifest['items']} images ({manifest['source']}) at step "
          f"{manifest['step']}, width {manifest['width']}, {manifest['dtype']}; skipped: {sum(skipped.values())}"
          + "".join(f", {r}: {c}" for r, c in skipped.items()) + f"\nindex: {args.index}")


def _query(args: argparse.Namespace) -> str:
  hits, sheet = query_lib.run(args.index, args.text, args.image, args.k, args.sheet, args.chunk_rows)
  return f"{exact.table(hits)}\ncontact sheet: {sheet}"


def print_report(report: Callable[[], str]) -> int:
  """Prints what `report` returns (exit status 0), or the error of a bad argument or input (2)."""
  try:
    print(report())
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  return print_report(lambda: _index(args) if args.command == "index" else _query(args))


if __name__ == "__main__":
  sys.exit(main())
