"""Few-shot prompting settings shared by the generative evaluators (VQA, captioning): which shot
counts to run, and which support examples each eval item's prompt takes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def parse_shots(value, where: str) -> tuple[int, ...]:
  """A shot count or a list of them -> distinct ints >= 0; `where` names the setting in errors."""
  shots = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else (value,)
  if not shots or any(not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 0 for k in shots):
    raise ValueError(f"{where}={value!r} is invalid; valid: a non-empty list of ints >= 0, e.g. (0, 4, 8).")
  if len(set(shots)) != len(shots):
    raise ValueError(f"{where}={value!r} repeats a value; list each number of shots once.")
  return tuple(int(k) for k in shots)


def support_indices(num_eval: int, num_support: int, max_shots: int, seed: int) -> np.ndarray:
  """int [num_eval, max_shots]: distinct support examples per eval item, from (seed, index).

  k-shot prompts take the first k, so the 4-shot supports of an item are in its 8-shot ones.
  """
  if max_shots == 0:
    return np.zeros((num_eval, 0), np.int64)
  return np.stack([np.random.default_rng([seed, i]).choice(num_support, max_shots, replace=False)
                   for i in range(num_eval)])
