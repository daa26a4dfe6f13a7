"""CLIP on the shapes world, on CPU in minutes.

  python -m vljax.train --config configs/clip_shapes.py --workdir runs/clip

Expected on a 2-core CPU (about 5 minutes): see README "Results" for the measured figures;
eval/zeroshot/top1 >= 0.50 over all 64 color x shape classes (chance 1/64).
"""

from vljax import config as common


def get_config(arg=None):
  c = common.base_config(arg)
  c.model = dict(name="two_tower", embed_dim=128,
                 image=dict(variant="shapes/conv-64", pool="gap", posemb="sincos2d"),
                 text=dict(variant="shapes-64", causal=False, pool="last"),
                 logit_scale_init=1 / 0.07)
  c.objectives = {"softmax_contrastive": 1.0}
  c.batch_size = 128
  c.total_steps = 800
  c.optimizer.lr = 2e-3
  c.schedule.warmup_steps = 50
  c.evals = common.shapes_evals(every=200)
  c.checkpoint.every = 200
  c.log_every = 25
  return c
