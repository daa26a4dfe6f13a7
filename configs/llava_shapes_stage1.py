"""LLaVA on the shapes world, stage 1: only the projector trains (vision tower and LM frozen).

The chain of commands (CPU, minutes each):
  python -m vljax.train --config configs/clip_shapes.py --workdir runs/demo          # or `make demo`
  python -m vljax.train --config configs/lm_shapes.py --workdir runs/lm
  python -m vljax.train --config configs/llava_shapes_stage1.py:clip=runs/demo,lm=runs/lm \\
      --workdir runs/llava1
  python -m vljax.train --config configs/llava_shapes_stage2.py:stage1=runs/llava1 --workdir runs/llava2

Stage 1 reads the CLIP run's image tower (its stem and encoder; the contrastive head stays behind)
and the LM run's txt / lm / logits, and trains the mlp2x_gelu projector on image-caption and
image-question-answer chunks (loss on the caption / answer only). Evaluates VQA (accuracy per
question type next to the majority-answer baseline) and captioning.
"""

import common


def get_config(arg=None):
  runs = common.parse_arg(arg, clip="runs/demo", lm="runs/lm")
  c = common.base_config(arg)
  c.model = dict(name="llava", image=dict(common.SHAPES_IMAGE_TOWER), text=common.shapes_language_model(),
                 projector="mlp2x_gelu")
  c.objectives = {"captioning": 1.0}
  c.data.update(format="vlm", vqa_fraction=0.5, max_len=32)
  c.init_from = dict(workdir="", subtree="", step=-1,
                     sources=(f"{runs['clip']}:img/stem,img/encoder", f"{runs['lm']}:txt,lm,logits"))
  c.frozen = ("img/.*", "txt/.*", "lm/.*", "logits/.*")
  c = common.shapes_training(c, total_steps=300)
  c.evals = llava_evals(every=150)
  c.checkpoint.every = 150
  return c


def llava_evals(every: int) -> dict:
  return dict(vqa=dict(every=every, num_examples=256, shots=(0,)),
              caption=dict(every=every, num_examples=128, num_references=5, decode=dict(method="greedy",
                                                                                         max_len=24)))
