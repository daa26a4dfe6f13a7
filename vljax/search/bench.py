"""`python -m vljax.search.bench --index OUT [--repeats 20] [--scan_sizes 1000000,3000000]`: query latency.

Times text queries on a warm Searcher (the index's run loaded, its text encoder compiled by a first
query): the median of --repeats queries (shapes captions, each a new text) for embedding the text,
for the exact search, and for both; the contact sheet is not drawn. Then the search alone over
random unit rows of the index's width and dtype at each --scan_sizes count (in memory: a search's
cost is its rows, not their values), to find the index size at which a query stops being
interactive (--budget_ms, 200). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from vljax.data import shapes
from vljax.search import __main__ as cli, exact, query


def _median_ms(fn, repeats: int) -> float:
  times = []
  for i in range(repeats):
    start = time.perf_counter()
    fn(i)
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def _unit_rows(count: int, width: int, dtype: str, rng: np.random.Generator) -> np.ndarray:
  rows = rng.standard_normal((count, width), np.float32)
  rows /= np.linalg.norm(rows, axis=1, keepdims=True)
  return rows.astype(dtype, copy=False)


def measure(index: str, repeats: int, k: int, scan_sizes: list[int]) -> dict:
  """{"count", "embed_ms", "search_ms", "query_ms", "scan": {size: search ms}}."""
  searcher = query.Searcher(index)
  world = shapes.ShapesWorld()
  texts = [world.example(i, "eval", render=False)["caption"] for i in range(repeats + 1)]
  searcher.search(searcher.embed(text=texts[-1]), k)  # compiles the text encoder
  queries = [searcher.embed(text=t) for t in texts[:repeats]]
  out = {"count": len(searcher.ids),
         "embed_ms": _median_ms(lambda i: searcher.embed(text=texts[i]), repeats),
         "search_ms": _median_ms(lambda i: searcher.search(queries[i], k), repeats),
         "query_ms": _median_ms(lambda i: searcher.search(searcher.embed(text=texts[i]), k), repeats), "scan": {}}
  rng = np.random.default_rng(0)
  for size in scan_sizes:
    rows = _unit_rows(size, searcher.manifest["width"], searcher.manifest["dtype"], rng)
    out["scan"][size] = _median_ms(lambda i: exact.search(rows, queries[i % repeats], k), max(3, repeats // 4))
  return out


def table(result: dict, budget_ms: float) -> str:
  lines = ["| indexed images | text embedding (ms) | exact search (ms) | query total (ms) |", "|---:|---:|---:|---:|",
           f"| {result['count']:,} | {result['embed_ms']:.1f} | {result['search_ms']:.1f} | {result['query_ms']:.1f} |"]
  for size, ms in result["scan"].items():
    lines.append(f"| {size:,} (random rows) | ({result['embed_ms']:.1f}) | {ms:.1f} | {result['embed_ms'] + ms:.1f} |")
  # The largest size's cost per row: the least swayed by fixed costs and by other jobs' noise.
  sizes = {result["count"]: result["search_ms"], **result["scan"]}
  largest = max(sizes)
  per_row = sizes[largest] / largest
  limit = (budget_ms - result["embed_ms"]) / per_row
  lines.append(f"\nsearch cost {1e6 * per_row:.1f} ns per image (at {largest:,}): a query passes {budget_ms:.0f} ms "
               f"at about {limit:,.0f} indexed images")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m vljax.search.bench", description=__doc__.split("\n\n")[0])
  parser.add_argument("--index", required=True, help="directory of a complete index")
  parser.add_argument("--repeats", type=int, default=20, help="queries timed (%(default)s)")
  parser.add_argument("-k", type=int, default=10, help="hits per query (%(default)s)")
  parser.add_argument("--scan_sizes", default="", help="comma-separated row counts to time the search alone at")
  parser.add_argument("--budget_ms", type=float, default=200.0, help="an interactive query's limit (%(default)s)")
  args = parser.parse_args(argv)

  def report() -> str:
    if args.repeats < 1:
      raise ValueError(f"--repeats={args.repeats} is invalid; valid: >= 1")
    sizes = [int(float(s)) for s in args.scan_sizes.split(",") if s]
    return table(measure(args.index, args.repeats, args.k, sizes), args.budget_ms)
  return cli.print_report(report)


if __name__ == "__main__":
  sys.exit(main())
