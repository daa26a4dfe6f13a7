"""Bridges from a frozen image encoder to a frozen language model, on equal footing: LLaVA's MLP
projector, Flamingo's Perceiver resampler with gated cross-attention, and BLIP-2's Q-Former (stage 2,
from a stage-1 run). Each arm reads the same CLIP run's image tower and the same LM run, both frozen,
trains its bridge alone on the same image-text chunks (captions and questions, one image a
sequence) at the FLOPs of LLaVA's recipe, 3 seeds, judged by zero-shot VQA per question type and
caption CIDEr. The chain (paths are examples):

  python -m vljax.train --config configs/clip_shapes.py --workdir runs/demo          # or `make demo`
  python -m vljax.train --config configs/lm_shapes.py --workdir runs/lm
  python -m vljax.train --config configs/blip2_shapes_stage1.py:clip=runs/demo --workdir runs/blip2_1
  python -m vljax.compare --suite configs/compare/shapes_bridges.py:clip=runs/demo,lm=runs/lm,stage1=runs/blip2_1 \\
      --workdir runs/bridges

The Q-Former arm's stage 1 is compute spent before the budget (as the CLIP and LM runs are for
every arm); `--dry_run` prints each arm's steps and FLOPs per step and the parameters each bridge
trains. steps=N sets the budget to LLaVA's N steps (default: its recipe's 300); the other arms get
the steps of the same FLOPs. Measured (3 seeds, 27 minutes on a 2-core CPU; README, report in
docs/results/shapes_bridges): VQA 0.32 / 0.57 / 0.55 and CIDEr 0.75 / 1.39 / 1.14 for LLaVA's
projector / Flamingo / the Q-Former.
"""

import ml_collections

import common


def get_config(arg=None):
  runs = common.parse_arg(arg, clip="runs/demo", lm="runs/lm", stage1="runs/blip2_1", steps="")
  if runs["steps"] and (not runs["steps"].isdigit() or int(runs["steps"]) < 1):
    raise ValueError(f"shapes_bridges steps={runs['steps']!r}; valid: an integer >= 1 (LLaVA's steps)")
  c = ml_collections.ConfigDict()
  c.seeds = (0, 1, 2)
  c.budget = dict(match="flops", like="llava")
  # One image a sequence for every arm (Flamingo's recipe interleaves 4), the same text length.
  c.overrides = (("data.chunks", 1), ("data.max_len", 32), ("batch_size", 128))
  if runs["steps"]:  # every recipe's steps: LLaVA's set the budget, the others are matched to it
    c.overrides += (("total_steps", int(runs["steps"])),)
  c.arms = dict(
      llava=dict(recipe=f"llava_shapes_stage1.py:clip={runs['clip']},lm={runs['lm']}"),
      flamingo=dict(recipe=f"flamingo_shapes.py:clip={runs['clip']},lm={runs['lm']}"),
      qformer=dict(recipe=f"blip2_shapes_stage2.py:stage1={runs['stage1']},lm={runs['lm']}"),
  )
  c.evals = dict(vqa=dict(num_examples=256, shots=(0,)),
                 caption=dict(num_examples=128, num_references=5, decode=dict(method="greedy", max_len=24)))
  c.eval_points = 2
  c.rank_by = ("eval/vqa/acc", "eval/caption/cider")
  return c
