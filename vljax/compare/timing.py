"""Equal wall time (budget match="seconds"): every arm's train step compiled and timed on this
machine, arms interleaved round by round, so a slow spell of a shared machine falls on all of them
rather than on whichever arm ran then. An arm's seconds per step is the median of all its timed
steps; the spread across rounds is printed beside it. Every arm's compiled step and state stay
resident until the last round: on an accelerator, arms that fit one at a time may not fit together."""

from __future__ import annotations

from collections.abc import Mapping

import ml_collections
import numpy as np


def measure_seconds_per_step(configs: Mapping[str, ml_collections.ConfigDict], rounds: int, steps: int,
                             warmup: int, log=print) -> dict[str, float]:
  """{arm: median seconds of one train step} over `rounds` x `steps` timed steps an arm."""
  from vljax.bench.train import PreparedStep

  prepared = {}
  for arm, cfg in configs.items():
    log(f"budget match='seconds': compiling arm {arm!r}'s train step")
    prepared[arm] = PreparedStep(cfg)
    prepared[arm].time_steps(warmup)
  times = {arm: [] for arm in configs}
  for _ in range(rounds):
    for arm, step in prepared.items():
      times[arm].append(step.time_steps(steps))
  out = {}
  for arm, rows in times.items():
    out[arm] = float(np.median(np.concatenate(rows)))
    per_round = ", ".join(f"{np.median(row):.3f}" for row in rows)
    log(f"budget match='seconds': arm {arm!r}: {out[arm]:.3f} s/step (median per round: {per_round})")
  return out
