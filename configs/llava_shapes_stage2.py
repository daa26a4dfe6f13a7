"""LLaVA on the shapes world, stage 2: projector and language model train; the vision tower stays frozen.

  python -m vljax.train --config configs/llava_shapes_stage2.py:stage1=runs/llava1 --workdir runs/llava2

Starts from every parameter of the stage-1 run (the chain of commands is in llava_shapes_stage1.py);
same data, schedule and evaluations.
"""

import os

import common


def get_config(arg=None):
  runs = common.parse_arg(arg, stage1="runs/llava1")
  c = common.load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "llava_shapes_stage1.py"))
  c.init_from = dict(workdir=runs["stage1"], subtree="", step=-1, sources=())
  c.frozen = ("img/.*",)
  return c
