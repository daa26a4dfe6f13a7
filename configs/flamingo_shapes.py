"""Flamingo on the shapes world: a Perceiver resampler and gated cross-attention blocks learn to
feed a frozen CLIP image tower's tokens to a frozen language model.

The chain of commands (CPU, minutes each):
  python -m vljax.train --config configs/clip_shapes.py --workdir runs/demo          # or `make demo`
  python -m vljax.train --config configs/lm_shapes.py --workdir runs/lm
  python -m vljax.train --config configs/flamingo_shapes.py:clip=runs/demo,lm=runs/lm --workdir runs/flamingo

Training sequences interleave 4 image-text chunks (captions and question-answer pairs; the loss on
captions and answers). Only the resampler and the cross-attention blocks train: the image tower
and the LM are frozen (no gradient computed for them). 16 latents per image here (the model's
default is 64) keep the CPU step short. Evaluates VQA and captioning 0-, 4- and 8-shot
(eval/vqa/acc_{k}shot, eval/caption/cider_{k}shot) with the majority-answer VQA baseline; caption
support examples have at most 10 words, so 8 of them and the query fit the LM's 150 positions.
"""

import common


def get_config(arg=None):
  runs = common.parse_arg(arg, clip="runs/demo", lm="runs/lm")
  c = common.base_config(arg)
  c.model = dict(name="flamingo", image=dict(common.SHAPES_IMAGE_TOWER), text=common.shapes_language_model(),
                 num_latents=16, resampler_depth=2, cross_attn_every_n_layers=1,
                 only_attend_immediate_media=True)
  c.objectives = {"captioning": 1.0}
  c.data.update(format="vlm", vqa_fraction=0.5, chunks=4, max_len=100)
  c.init_from = dict(workdir="", subtree="", step=-1,
                     sources=(f"{runs['clip']}:img/stem,img/encoder", f"{runs['lm']}:txt,lm,logits"))
  c.frozen = ("img/.*", "txt/.*", "lm/.*", "logits/.*")
  c = common.shapes_training(c, total_steps=300)
  c.batch_size = 128
  shots = dict(shots=(0, 4, 8), prompt_max_len=146)
  c.evals = dict(vqa=dict(every=150, num_examples=256, **shots),
                 caption=dict(every=150, num_examples=128, num_references=5, decode=dict(max_len=24),
                              support_max_words=10, **shots))
  c.checkpoint.every = 150
  return c
