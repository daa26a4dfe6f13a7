"""SigLIP (pairwise sigmoid loss) on the shapes world, on CPU in minutes.

  python -m vljax.train --config configs/siglip_shapes.py --workdir runs/siglip

Expected on a 2-core CPU (about 5 minutes): eval/zeroshot/top1 >= 0.50 (README "Results").
The ring form of the loss, for many devices: --config.loss_impl=shard_map
"""

from vljax import config as common


def get_config(arg=None):
  c = common.base_config(arg)
  c.model = dict(name="two_tower", embed_dim=128,
                 image=dict(variant="shapes/conv-64", pool="gap", posemb="sincos2d"),
                 text=dict(variant="shapes-64", causal=False, pool="last"),
                 logit_scale_init=10.0, logit_bias_init=-10.0)
  c.objectives = {"sigmoid_contrastive": 1.0}
  c.batch_size = 128
  c.total_steps = 800
  c.optimizer.lr = 2e-3
  c.schedule.warmup_steps = 50
  c.evals = common.shapes_evals(every=200)
  c.checkpoint.every = 200
  c.log_every = 25
  return c
