"""LLaVA on the shapes world, stage 2: projector and language model train; the vision tower stays frozen.

  python -m vljax.train --config configs/llava_shapes_stage2.py:stage1=runs/llava1 --workdir runs/llava2

Starts from every parameter of the stage-1 run (the chain of commands is in llava_shapes_stage1.py);
same schedule and evaluations. Its data is visual instruction tuning, as LLaVA's stage 2: half the
examples are multi-turn conversations about one scene (describe it, then one or two questions about
it; vljax/data/conversations.py, the loss on the assistant's turns alone), a quarter questions, a
quarter captions. On real data: data.name="folder", data.path=LLaVA's instruction JSON (its
"conversations" records), and an LM folder's chat template lays the turns out where it has one.
"""

import os

import common


def get_config(arg=None):
  runs = common.parse_arg(arg, stage1="runs/llava1")
  c = common.load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "llava_shapes_stage1.py"))
  c.init_from = dict(workdir=runs["stage1"], subtree="", step=-1, sources=())
  c.frozen = ("img/.*",)
  # Conversations take up to 54 tokens in the world's words (stage 1's chunks: 32).
  c.data.update(conversation_fraction=0.5, vqa_fraction=0.25, max_len=56)
  return c
