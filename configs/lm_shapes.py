"""A decoder-only language model on the shapes world's captions and question-answer text.

  python -m vljax.train --config configs/lm_shapes.py --workdir runs/lm

Text only: sequences of 6 chunks such as "caption: a red circle<eoc>" and
"question: what color is the circle? answer: red<eoc>", so positions up to 150 are trained (an
8-shot prompt needs ~130); the loss trains the captions and answers. LLaVA and Flamingo start their
language model from this run (init_from subtrees txt, lm, logits): see llava_shapes_stage1.py and
flamingo_shapes.py.
"""

import common


def get_config(arg=None):
  c = common.base_config(arg)
  c.model = dict(name="lm", text=common.shapes_language_model())
  c.objectives = {"captioning": 1.0}
  c.data.update(format="lm", vqa_fraction=0.5, chunks=6, max_len=150)
  c = common.shapes_training(c, total_steps=300)
  c.evals = {}
  c.checkpoint.every = 300
  return c
