"""SigLIP with a NaFlex image tower on the shapes world: every image at its own aspect ratio.

  python -m vljax.train --config configs/siglip_naflex_shapes.py --workdir runs/siglip_naflex

Each training and evaluation image is stretched to its own aspect ratio (width / height, drawn
log-uniform in [1/2, 2] from the example's index), resized to the largest grid of 8 px patches of
that aspect with at most 64 patches (8x8 for a square, 11x5 for 1:2), and padded to 64 tokens; the
tower masks the padding and resamples its 8x8 learned position grid to each image's grid
(vljax/models/naflex.py, vljax/data/naflex.py). `:fast=1` is the 2-minute smoke run; `:fixed=1` the
same tower and schedule at fixed resolution (square 64x64 images, no padding), the baseline.

Expected on a 2-core CPU (default 600 steps; 11 minutes on a machine shared with other jobs): eval/zeroshot/color_acc 1.0,
eval/zeroshot/top1 ~0.18, eval/retrieval/i2t_r1 ~0.29 (one seed; README, the NaFlex paragraph).
"""

import common


def get_config(arg=None):
  args = common.parse_arg(arg, fast="0", fixed="0")
  c = common.base_config()
  image = dict(variant="shapes/patch-64", depth=2, posemb="learned", pool="max", naflex=dict(posemb_grid=8))
  c.model = common.shapes_contrastive(image=image, logit_scale_init=10.0, logit_bias_init=-10.0)
  c.objectives = {"sigmoid_contrastive": 1.0}
  c = common.shapes_training(c, total_steps=600)
  c.batch_size = 128
  c.data.naflex = dict(max_patches=64, patch=8, aspect=(0.5, 2.0))
  if args["fixed"] == "1":
    image.pop("naflex")
    c.model = common.shapes_contrastive(image=image, logit_scale_init=10.0, logit_bias_init=-10.0)
    c.data.naflex = None
  c.evals = common.shapes_evals(every=200)
  c.checkpoint.every = 200
  if args["fast"] == "1":
    c.total_steps, c.evals = 100, common.shapes_evals(every=100, zeroshot=dict(num_examples=256),
                                                      retrieval=dict(num_examples=256), binding=dict(num_examples=256))
  return c
