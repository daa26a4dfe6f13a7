"""SigLIP 2 ViT-B/16 at 224 px: configs/siglip_vit_b16.py's sigmoid recipe + LocCa's decoder from
the start, then self-distillation (SILC) and masked prediction (TIPS) on the EMA teacher for the last
20% of training (vljax/objectives/self_distillation.py).

  python -m vljax.train --config configs/siglip2_vit_b16.py:'train=array_record:/data/webli/*.array_record,tokenizer=sentencepiece:/data/siglip_c4_en.model?bos=none&pad=eos&clean=canonicalize&loc=1024,zeroshot=/data/tfds/imagenet2012/5.1.0,classnames=/data/imagenet_classnames.txt' \\
      --workdir gs://BUCKET/siglip2_b16

LocCa reads data.format="locca" records (boxes in the records: vljax/data/boxes.py) and a tokenizer
with location tokens (the loc=N option). `:locca=0` drops the decoder (SigLIP + SILC/TIPS on any
image-text source). Self-distillation: 8 local crops a image of 5-40% of the area at 96 px (6x6
patches; the learned position embedding is resized to them), SILC's; masked prediction: half the
patches, SigLIP 2's; weights 1 and 0.25. The teacher is the EMA of the weights (decay 0.999, fixed as
SILC keeps it); SigLIP 2 restarts its teacher from the student at the switch, this one has tracked
the weights since step 0. Neither objective's passes are in the step's FLOP count (MFU).
Without `train=` it runs on the shapes world (keys: common.use_real_data).
"""

import common
import siglip_vit_b16


def get_config(arg=None):
  args = common.parse_arg(arg, locca="1", **common.REAL_DATA_ARGS)
  locca = args.pop("locca")
  if locca not in ("0", "1"):
    raise ValueError(f"config argument locca={locca!r}; valid: '1' (SigLIP 2: the LocCa decoder) or '0'")
  c = siglip_vit_b16.sigmoid_b16(arg)
  c.model.image.mask_token = True
  c.objectives = {"sigmoid_contrastive": 1.0,
                  "self_distillation": dict(weight=1.0, start_fraction=0.8, local_crops=8, local_size=96,
                                            crop_scale=(0.05, 0.4)),
                  "masked_prediction": dict(weight=0.25, start_fraction=0.8, mask_ratio=0.5)}
  c.ema = dict(decay=0.999, warmup=False, evaluate="raw")
  if locca == "1":  # a 6-layer decoder of the text width on the un-pooled image tokens
    c.model.decoder = dict(variant="L", depth=6, max_len=64)
    c.objectives["locca"] = 1.0
    c.data.format = "locca"
    c.data.tokenizer = "shapes?loc=32"  # the shapes world's, until tokenizer= gives one with loc=N
    c.data.locca = dict(tasks=dict(caption=0.5, refexp=0.25, grounded=0.25))
  return common.use_real_data(c, args, eval_every=2000)
