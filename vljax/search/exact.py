"""Exact search of an index: every image scored against the query, a chunk of rows at a time (memory
stays that of one chunk at any index size), the top k merged across chunks with a partial sort.

Hits are ordered by score, then by position in the index: a tie at the k-th score keeps the
earlier images, however the rows fall into chunks.
"""

from __future__ import annotations

import dataclasses

import numpy as np

CHUNK_ROWS = 32768  # [chunk, E] float32 scored at once: 16 MiB at E = 128


@dataclasses.dataclass(frozen=True)
class Hit:
  rank: int  # 1-based
  index: int  # row of the index
  id: str
  score: float


def best(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """The k best (scores, rows), by score descending then row ascending (ties at the k-th score
  broken by row, so merging chunks in any grouping picks the same set)."""
  if len(scores) > k:
    kth = np.partition(scores, len(scores) - k)[len(scores) - k]  # the k-th largest, in linear time
    above = np.flatnonzero(scores > kth)
    tied = np.flatnonzero(scores == kth)
    tied = tied[np.argsort(rows[tied], kind="stable")][:k - len(above)]
    keep = np.concatenate([above, tied])
    scores, rows = scores[keep], rows[keep]
  order = np.lexsort((rows, -scores))
  return scores[order], rows[order]


def scores(rows: np.ndarray, query: np.ndarray) -> np.ndarray:
  """float32 [N]: cosines of rows [N, E] with query [E], or for query-form rows [N, Q, E] (BLIP-2's)
  the best query's, as the training loss scores them. einsum, not a BLAS product: it sums each row in
  one order wherever the row sits in a chunk (BLAS's last bits depend on that), at the same speed."""
  if rows.ndim == 2:
    return np.einsum("nd,d->n", rows, query)
  return np.einsum("nqd,d->nq", rows, query).max(axis=1)


def check_k(k: int) -> None:
  if k < 1:
    raise ValueError(f"-k={k} is invalid; valid: >= 1 (hits to return)")


def search(embeddings: np.ndarray, query: np.ndarray, k: int, chunk_rows: int = CHUNK_ROWS
           ) -> tuple[np.ndarray, np.ndarray]:
  """(rows [min(k, N)], scores) of the k embeddings ([N, E] or [N, Q, E]) scoring highest against
  `query` [E]."""
  check_k(k)
  if chunk_rows < 1:
    raise ValueError(f"chunk_rows={chunk_rows} is invalid; valid: >= 1")
  query = np.asarray(query, np.float32)
  top_scores, top_rows = np.zeros((0,), np.float32), np.zeros((0,), np.int64)
  for start in range(0, len(embeddings), chunk_rows):
    chunk = np.asarray(embeddings[start:start + chunk_rows], np.float32)  # float16 rows: this chunk's copy
    chunk_scores, rows = best(scores(chunk, query), np.arange(start, start + len(chunk)), k)
    top_scores, top_rows = best(np.concatenate([top_scores, chunk_scores]), np.concatenate([top_rows, rows]), k)
  return top_rows, top_scores


def hits(rows: np.ndarray, scores: np.ndarray, ids: list[str]) -> list[Hit]:
  return [Hit(rank + 1, int(r), ids[r], float(s)) for rank, (r, s) in enumerate(zip(rows, scores))]


def table(found: list[Hit]) -> str:
  """rank, score and path of each hit, as printed."""
  return "\n".join([f"{'rank':>4}  {'score':>7}  path"] + [f"{h.rank:>4}  {h.score:>7.4f}  {h.id}" for h in found])
