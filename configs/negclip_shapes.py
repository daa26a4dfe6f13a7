"""NegCLIP on the shapes world: clip_shapes.py with each caption's attribute- and relation-swapped
twins added as negatives (data.format="hard_negatives", objective softmax_hard_negatives).

  python -m vljax.train --config configs/negclip_shapes.py --workdir runs/negclip

The same towers, batch, steps and evaluation sets as clip_shapes.py, so the two differ only in the
objective. Expected on a 2-core CPU (seeds 0/1/2, README "Results"): zero-shot top1 0.813 +- 0.007,
binding attribute / relation 0.537 +- 0.056 / 0.521 +- 0.031 (chance 0.5: no better than CLIP on these
towers). The twins cost a second pass of the text tower on 2 x batch captions per step.
"""

import common


def get_config(arg=None):
  c = common.base_config(arg)
  c.model = common.shapes_contrastive()
  c.data.format = "hard_negatives"
  c.objectives = {"softmax_hard_negatives": 1.0}
  return common.shapes_training(c)
