"""LiT on the shapes world: the image tower of a finished CLIP run, locked; only text trains.

  python -m vljax.train --config configs/clip_shapes.py --workdir runs/clip
  python -m vljax.train --config configs/lit_shapes.py:runs/clip --workdir runs/lit

The argument is the CLIP run's workdir (default runs/demo, what `make demo` writes).
No gradient is computed for the frozen image tower. Results: README "Results".
"""

from vljax import config as common


def get_config(arg=None):
  c = common.base_config()
  c.model = dict(name="two_tower", embed_dim=128,
                 image=dict(variant="shapes/conv-64", pool="gap", posemb="sincos2d"),
                 text=dict(variant="shapes-64", causal=False, pool="last"),
                 logit_scale_init=1 / 0.07)
  c.objectives = {"softmax_contrastive": 1.0}
  c.init_from = dict(workdir=arg or "runs/demo", subtree="img", step=-1)
  c.frozen = ("img/.*",)
  c.batch_size = 128
  c.total_steps = 600
  c.optimizer.lr = 2e-3
  c.schedule.warmup_steps = 50
  c.evals = common.shapes_evals(every=200)
  c.checkpoint.every = 200
  c.log_every = 25
  return c
