"""CoCa (contrastive + captioning) on the shapes world, on CPU in minutes.

  python -m vljax.train --config configs/coca_shapes.py --workdir runs/coca

Same batch size and steps as clip_shapes.py. Objectives: 1.0 x softmax contrastive + 2.0 x
captioning (the paper's weights). Evaluates zero-shot, retrieval and binding on the contrastive
embeddings and generated captions (greedy) with CIDEr / BLEU / attribute accuracy; measured
figures in README "Results".
"""

import common


def get_config(arg=None):
  c = common.base_config(arg)
  c.model = common.shapes_coca()
  c.objectives = {"softmax_contrastive": 1.0, "captioning": 2.0}
  c = common.shapes_training(c)
  c.evals = common.shapes_evals(every=250, captioning=True)
  return c
