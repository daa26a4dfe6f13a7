"""BLIP-2 stage 1 on the shapes world: a Q-Former learns to read the CLIP demo's image tower, frozen.

  python -m vljax.train --config configs/clip_shapes.py --workdir runs/demo          # or `make demo`
  python -m vljax.train --config configs/blip2_shapes_stage1.py:clip=runs/demo --workdir runs/blip2_1

8 learned queries and a 2-layer text transformer of the shapes width, cross-attention to the image
tokens in every other block (vljax/models/qformer.py); one step trains ITC (max over the queries),
ITM on mined hard negatives and ITG (captioning under the multimodal causal mask) with BLIP-2's
equal weights (vljax/models/blip2.py). The image tower (stem and encoder) comes from the CLIP run
and stays frozen. Evaluated as the two-tower recipes are, on the query-form embeddings, retrieval also
after ITM re-ranking. Measured (seed 0, one run, --config.total_steps=300 instead of 750, on the demo
run of the 2-core CPU, 10 minutes shared): zero-shot 0.46 (colour 1.00), retrieval R@1 0.56 / 0.54,
after ITM re-ranking 0.18 / 0.05 (the ITM head, 300 steps old, reorders for the worse), binding 0.49.
"""

import common


def get_config(arg=None):
  runs = common.parse_arg(arg, clip="runs/demo")
  c = common.base_config(arg)
  c.model = dict(name="qformer", image=dict(common.SHAPES_IMAGE_TOWER), text=dict(variant="shapes-64", depth=2),
                 num_queries=8, cross_every=2, embed_dim=64)
  c.objectives = {"softmax_contrastive": 1.0, "itm": 1.0, "captioning": 1.0}
  c.init_from = dict(workdir="", subtree="", step=-1, sources=(f"{runs['clip']}:img/stem,img/encoder",))
  c.frozen = ("img/.*",)
  c = common.shapes_training(c)
  c.evals = common.shapes_evals(every=250, retrieval=dict(itm_k=16))
  return c
