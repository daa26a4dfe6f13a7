"""SigLIP (pairwise sigmoid loss) on the shapes world, on CPU in minutes.

  python -m vljax.train --config configs/siglip_shapes.py --workdir runs/siglip

Expected on a 2-core CPU, training part about 4.5 minutes: eval/zeroshot/top1 >= 0.50
(measured figures in README "Results"). For many devices, the ppermute ring form of the loss:
--config.loss_impl=shard_map
"""

from vljax import config as common


def get_config(arg=None):
  c = common.base_config(arg)
  c.model = common.shapes_two_tower(logit_scale_init=10.0, logit_bias_init=-10.0)
  c.objectives = {"sigmoid_contrastive": 1.0}
  return common.shapes_training(c)
