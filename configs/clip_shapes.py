"""CLIP on the shapes world, on CPU in minutes (what `make demo` trains).

  python -m vljax.train --config configs/clip_shapes.py --workdir runs/clip

Expected on a 2-core CPU, training part about 4.5 minutes: eval/zeroshot/top1 >= 0.50 over all
64 color x shape classes (chance 1/64; measured figures in README "Results").
"""

import common


def get_config(arg=None):
  c = common.base_config(arg)
  c.model = common.shapes_contrastive()
  c.objectives = {"softmax_contrastive": 1.0}
  return common.shapes_training(c)
