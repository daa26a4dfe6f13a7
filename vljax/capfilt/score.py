"""CapFilt's decisions on a noisy shapes dataset, scored against its ground truth.

  python -m vljax.capfilt.score --data NOISY_DIR --capfilt OUTPUT_DIR

The filter at removing the wrong web captions: precision and recall at the job's threshold
(positive = "noisy", predicted positive = "removed"), recall by noise kind ("swapped" split by the
word changed), and the ROC AUC of 1 - match probability (the ranking, whatever the threshold; by
kind: that kind against the clean captions). The captioner: the share of its synthetic captions that
describe their scene (one of the world's own wordings, vljax/capfilt/scenes.py), that name its
objects (colour and shape) and its colours right; the same among the kept and the removed ones. The
dataset: the share of correct pairs in the web input and among the kept pairs. And what other
thresholds would have given (decisions are a function of the scores).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np

from vljax.capfilt import noisy_shapes, scenes
from vljax.data import shapes

SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


def read_captions(output: str) -> list[dict]:
  """Every row of a CapFilt output's shard-*.jsonl."""
  paths = sorted(glob.glob(os.path.join(output, "shard-*.jsonl")))
  if not paths:
    raise FileNotFoundError(f"--capfilt {output!r} holds no shard-*.jsonl; run python -m vljax.capfilt first")
  rows = []
  for path in paths:
    with open(path, encoding="utf-8") as f:
      rows += [json.loads(line) for line in f]
  return rows


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
  """P(score of a random positive > score of a random negative), ties counting half (Mann-Whitney)."""
  pos, neg = scores[positive], scores[~positive]
  if not len(pos) or not len(neg):
    return float("nan")
  greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
  return float(greater / (len(pos) * len(neg)))


def _share(flags) -> float:
  flags = np.asarray(flags, bool)
  return float(flags.mean()) if len(flags) else float("nan")


def noise_kind(row: dict) -> str:
  """A truth row's noise kind, "swapped" told apart by the word changed: swapped_color / swapped_shape."""
  if row["noise"] != "swapped":
    return row["noise"]
  changed = [a for a, b in zip(row["caption"].split(), row["true_caption"].split()) if a != b and a not in ("a", "an")]
  return "swapped_color" if changed and changed[0] in shapes.COLORS else "swapped_shape"


def _web(rows: list[dict], truth: dict[str, dict]) -> dict:
  noisy = np.array([truth[r["image"]]["noisy"] for r in rows], bool)
  removed = np.array([r["decision"] == "removed" for r in rows], bool)
  kinds = np.array([noise_kind(truth[r["image"]]) for r in rows])
  tp = int(np.sum(noisy & removed))
  doubt = 1 - np.array([r["itm_score"] for r in rows])
  return {"captions": len(rows), "noisy": int(noisy.sum()), "removed": int(removed.sum()), "removed_noisy": tp,
          "precision": tp / max(1, int(removed.sum())), "recall": tp / max(1, int(noisy.sum())),
          "recall_by_kind": {str(k): _share(removed[kinds == k]) for k in sorted(set(kinds[noisy]))},
          "clean_kept": _share(~removed[~noisy]), "auc": roc_auc(doubt, noisy),
          "auc_by_kind": {str(k): roc_auc(doubt[(kinds == k) | ~noisy], noisy[(kinds == k) | ~noisy])
                          for k in sorted(set(kinds[noisy]))}}


def _synthetic(rows: list[dict], truth: dict[str, dict]) -> dict:
  correct = np.array([scenes.describes(r["caption"], truth[r["image"]]["objects"]) for r in rows], bool)
  named = np.array([scenes.names_the_objects(r["caption"], truth[r["image"]]["objects"]) for r in rows], bool)
  colors = np.array([scenes.names_the_colors(r["caption"], truth[r["image"]]["objects"]) for r in rows], bool)
  kept = np.array([r["decision"] == "kept" for r in rows], bool)
  return {"captions": len(rows), "correct": _share(correct), "objects_named": _share(named),
          "colors_named": _share(colors), "kept": int(kept.sum()),
          "correct_among_kept": _share(correct[kept]), "correct_among_removed": _share(correct[~kept]),
          "auc": roc_auc(np.array([r["itm_score"] for r in rows]), correct)}


def _at(threshold: float, rows: list[dict], good: list[bool], noisy: dict[str, bool]) -> dict:
  """The decisions a job at `threshold` would make, from the scores: they are a pure function of them."""
  keep = np.array([r["itm_score"] >= threshold for r in rows], bool)
  web = np.array([r["provenance"] == "web" for r in rows], bool)
  wrong_web = web & np.array([noisy[r["image"]] for r in rows], bool)
  good = np.asarray(good, bool)
  tp = int(np.sum(wrong_web & ~keep))
  return {"threshold": threshold, "web_precision": tp / max(1, int(np.sum(web & ~keep))),
          "web_recall": tp / max(1, int(wrong_web.sum())), "kept_web_correct": _share(good[keep & web]),
          "kept_pairs": int(keep.sum()),
          "kept_synthetic_correct": _share(good[keep & ~web]), "kept_correct": _share(good[keep])}


def score(data_dir: str, output: str, thresholds: tuple[float, ...] = SWEEP) -> dict:
  truth = noisy_shapes.read_truth(data_dir)
  rows = read_captions(output)
  unknown = sorted({r["image"] for r in rows} - set(truth))
  if unknown:
    raise ValueError(f"--capfilt {output!r} has images not in --data {data_dir!r} (e.g. {unknown[0]!r}); "
                     "was it run on that dataset?")
  web = [r for r in rows if r["provenance"] == "web"]
  synthetic = [r for r in rows if r["provenance"] == "synthetic"]
  good = [not truth[r["image"]]["noisy"] if r["provenance"] == "web" else
          scenes.describes(r["caption"], truth[r["image"]]["objects"]) for r in rows]
  kept = [g for g, r in zip(good, rows) if r["decision"] == "kept"]
  kept_web = [g for g, r in zip(good, rows) if r["decision"] == "kept" and r["provenance"] == "web"]
  return {"web": _web(web, truth), "synthetic": _synthetic(synthetic, truth),
          "dataset": {"input_pairs": len(web), "input_correct": _share([not truth[r["image"]]["noisy"] for r in web]),
                      "kept_pairs": len(kept), "kept_correct": _share(kept),
                      "kept_web_pairs": len(kept_web), "kept_web_correct": _share(kept_web)},
          "thresholds": [_at(t, rows, good, {k: v["noisy"] for k, v in truth.items()}) for t in thresholds]}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m vljax.capfilt.score", description=__doc__.split("\n\n")[0])
  parser.add_argument("--data", required=True, help="the noisy shapes directory (captions.jsonl)")
  parser.add_argument("--capfilt", required=True, help="the CapFilt output directory run on it")
  args = parser.parse_args(argv)
  try:
    result = score(args.data, args.capfilt)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(result, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
