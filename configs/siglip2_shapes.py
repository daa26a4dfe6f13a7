"""SigLIP 2's recipe on the shapes world, on CPU: the sigmoid loss + LocCa's decoder on the image tokens
from the start, then self-distillation (SILC) and masked prediction (TIPS) on the EMA teacher for
the last 20% of training, in the same run (vljax/objectives/self_distillation.py).

  python -m vljax.train --config configs/siglip2_shapes.py --workdir runs/siglip2
  python -m vljax.train --config configs/siglip2_shapes.py:locca=0 --workdir runs/siglip_silc   # no decoder

Untuned and not yet measured against configs/siglip_shapes.py at matched compute (the comparison
harness, vljax.compare, gives that row). Where it differs from siglip_shapes.py:
  - one transformer layer in the image tower (siglip_shapes has none): masked prediction reads a
    masked patch from its neighbours, which a tower of convolutions alone cannot; a matched SigLIP
    arm takes --config.model.image.depth=1;
  - the tower's learned mask token (model.image.mask_token) and an EMA of the weights, the teacher
    (ema.decay=0.99: a horizon of ~100 steps, short for a 1000-step run);
  - data.format="locca" (boxes for the referring-expression and grounded-captioning tasks) and the
    decoder of configs/locca_shapes.py.
Local crops: 2 a image (SILC, SigLIP 2: 8) of 15-50% of the area at 32 px (4x4 patches): on 64 px
images of 1-3 objects, smaller crops mostly hold background. Weights 1 and 0.25 as SigLIP 2's.
Expected: train/self_distillation_active and train/masked_prediction_active 0 before step 800, 1 from it.
"""

import common


def get_config(arg=None):
  args = common.parse_arg(arg, locca="1")
  if args["locca"] not in ("0", "1"):
    raise ValueError(f"config argument locca={args['locca']!r}; valid: '1' (SigLIP 2: the LocCa decoder) or '0'")
  c = common.base_config(arg)
  image = dict(common.SHAPES_IMAGE_TOWER, variant="shapes/conv-128", pool="max", depth=1, mask_token=True)
  c.model = common.shapes_contrastive(image=image, logit_scale_init=10.0, logit_bias_init=-10.0)
  c.objectives = {"sigmoid_contrastive": 1.0,
                  "self_distillation": dict(weight=1.0, start_fraction=0.8, local_crops=2, local_size=32,
                                            crop_scale=(0.15, 0.5)),
                  "masked_prediction": dict(weight=0.25, start_fraction=0.8, mask_ratio=0.5)}
  c.ema = dict(decay=0.99, warmup=False, evaluate="raw")
  c = common.shapes_training(c, total_steps=1000)
  c.batch_size = 192
  c.schedule.end_fraction = 0.15
  if args["locca"] == "1":  # configs/locca_shapes.py's decoder, tasks and tokenizer
    c.model.decoder = dict(variant="shapes-64", depth=2)
    c.objectives.locca = 1.0
    c.data.format = "locca"
    c.data.tokenizer = "shapes?loc=32"
    c.data.max_len = 25
    c.data.locca = dict(tasks=dict(caption=0.5, refexp=0.25, grounded=0.25))
    c.evals = dict(c.evals, refexp=dict(every=250, num_examples=256))
  return c
