"""CLIP on the shapes world, on CPU in minutes (what `make demo` trains).

  python -m vljax.train --config configs/clip_shapes.py --workdir runs/clip

Expected on a 2-core CPU, training part about 4.5 minutes: eval/zeroshot/top1 >= 0.50 over all
64 color x shape classes (chance 1/64; measured figures in README "Results").
"""

from vljax import config as common


def get_config(arg=None):
  c = common.base_config(arg)
  c.model = common.shapes_two_tower()
  c.objectives = {"softmax_contrastive": 1.0}
  c.batch_size = 256
  c.total_steps = 750
  c.optimizer.lr = 3e-3
  c.schedule.warmup_steps = 50
  c.evals = common.shapes_evals(every=250)
  c.checkpoint.every = 250
  c.log_every = 25
  return c
