"""Fine-tune imported CLIP / SigLIP weights: the model, tokenizer, image size and pixel preset come
from a workdir written by `python -m vljax.convert`; training starts from its weights.

  python -m vljax.convert --checkpoint /ckpt/clip-vit-base-patch32 --workdir runs/openai_b32
  python -m vljax.train --config configs/finetune_imported.py:'init=runs/openai_b32,train=array_record:/data/cc3m/*.array_record,zeroshot=/data/tfds/imagenet2012/5.1.0,classnames=/data/imagenet_classnames.txt' \\
      --workdir runs/b32_ft

Other keys as configs/clip_vit_b16.py (common.use_real_data); without `train=` it
fine-tunes on the shapes world at the imported model's image size. The objective is the
imported model's own (softmax for CLIP, sigmoid for SigLIP). A small learning rate and short
warmup keep the pretrained features; `frozen` can lock a tower (LiT on CLIP: --config.frozen='("img/.*","img_proj/.*")';
SigLIP's image tower has no projection: "img/.*" alone).
"""

import json
import os

import ml_collections

import common


def get_config(arg=None):
  args = common.parse_arg(arg, init="", **common.REAL_DATA_ARGS)
  if not args["init"]:
    raise ValueError("finetune_imported.py needs init=WORKDIR: a workdir written by python -m vljax.convert")
  path = os.path.join(args.pop("init"), "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"finetune_imported.py: {path!r} does not exist; write it with python -m vljax.convert")
  with open(path) as f:
    imported = ml_collections.ConfigDict(json.load(f))
  c = common.base_config()
  c.model = imported.model
  c.objectives = imported.objectives
  c.data.update({k: imported.data[k] for k in ("image_size", "max_len", "tokenizer", "normalization")})
  c.init_from = dict(workdir=os.path.dirname(path), subtree="", step=-1, sources=())
  c.batch_size = 1024
  c.total_steps = 10_000
  c.optimizer = dict(name="adamw", lr=1e-5, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1, grad_clip_norm=1.0)
  c.schedule = dict(name="warmup_cosine", warmup_steps=500, end_fraction=0.0)
  c.evals = common.shapes_evals(every=1000)
  c.checkpoint = dict(every=1000, keep=3, async_save=True)
  c.log_every = 50
  return common.use_real_data(c, args, eval_every=1000)
