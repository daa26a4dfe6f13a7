"""LiT on the shapes world: the image tower of a finished CLIP run, locked; a fresh text tower trains.

  python -m vljax.train --config configs/clip_shapes.py --workdir runs/clip
  python -m vljax.train --config configs/lit_shapes.py:runs/clip --workdir runs/lit

The argument is the CLIP run's workdir (default runs/demo, what `make demo` writes). The image
tower, its projection included, gets no update and no gradient computation. Measured figures:
README "Results".
"""

import common


def get_config(arg=None):
  c = common.base_config()
  c.model = common.shapes_contrastive()
  c.objectives = {"softmax_contrastive": 1.0}
  # The image side is the tower (img) and its projection (img_proj, the contrastive head's).
  c.init_from = dict(workdir=arg or "runs/demo", subtree="img,img_proj", step=-1)
  c.frozen = ("img/.*", "img_proj/.*")
  return common.shapes_training(c, total_steps=500)
