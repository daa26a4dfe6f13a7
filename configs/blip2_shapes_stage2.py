"""BLIP-2 stage 2 on the shapes world: the stage-1 Q-Former's query outputs, through one linear layer,
become the soft prompt of the frozen shapes LM (LLaVA's layout with projector="qformer").

  python -m vljax.train --config configs/clip_shapes.py --workdir runs/demo          # or `make demo`
  python -m vljax.train --config configs/blip2_shapes_stage1.py:clip=runs/demo --workdir runs/blip2_1
  python -m vljax.train --config configs/lm_shapes.py --workdir runs/lm
  python -m vljax.train --config configs/blip2_shapes_stage2.py:stage1=runs/blip2_1,lm=runs/lm --workdir runs/blip2_2

The image tower and the Q-Former come from stage 1 (img, qformer), the language model from the LM run
(txt, lm, logits); the image tower and the LM stay frozen (and the Q-Former's text half, which stage
2 never runs), the Q-Former and the projection train, on llava_shapes_stage1.py's captions and
questions with its evaluations (VQA per question type, captions). It is the qformer arm of
configs/compare/shapes_bridges.py: VQA 0.553 ± 0.064 and CIDEr 1.14 ± 0.14 over 3 seeds at 581 steps
(README, "Bridges from a frozen image encoder to a frozen LM").
"""

import os

import common


def get_config(arg=None):
  runs = common.parse_arg(arg, stage1="runs/blip2_1", lm="runs/lm")
  here = os.path.dirname(os.path.abspath(__file__))
  c = common.load_config(os.path.join(here, "llava_shapes_stage1.py"))
  stage1 = common.load_config(os.path.join(here, "blip2_shapes_stage1.py"))
  q = stage1.model  # the Q-Former as stage 1 built it: its text positions are stage 1's data.max_len
  c.model = dict(name="llava", image=dict(common.SHAPES_IMAGE_TOWER), text=common.shapes_language_model(),
                 projector="qformer", qformer=dict(q.text.to_dict(), num_queries=q.num_queries,
                                                   cross_every=q.cross_every, max_len=stage1.data.max_len))
  c.init_from = dict(workdir="", subtree="", step=-1,
                     sources=(f"{runs['stage1']}:img,qformer", f"{runs['lm']}:txt,lm,logits"))
  # The Q-Former's text half (stage 2 never runs it): llava.QFORMER_TEXT_HALF.
  c.frozen = ("img/.*", "txt/.*", "lm/.*", "logits/.*", "qformer/(embedding|posemb)/.*",
              r"qformer/encoder/block_\d+/(ln2|mlp)/.*")
  return c
