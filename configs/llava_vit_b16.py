"""LLaVA on a ViT-B/16 image tower and a pretrained LLM: the real-scale recipe, for accelerators.

  # the LLM (a Hugging Face folder: Llama, Mistral, Qwen2, OPT, GPT-2) and the image tower's run
  python -m vljax.convert --checkpoint /ckpt/Qwen2-1.5B --workdir runs/qwen2
  python -m vljax.convert --checkpoint /ckpt/clip-vit-base-patch16 --workdir runs/clip_b16
  # stage 1: the projector alone, on image-caption pairs
  python -m vljax.train --config configs/llava_vit_b16.py:'clip=runs/clip_b16,lm=runs/qwen2,train=array_record:/data/cc3m/*.array_record' \\
      --workdir gs://BUCKET/llava1
  # stage 2: projector and LLM, on visual instruction conversations (LLaVA's JSON as it ships)
  python -m vljax.train --config configs/llava_vit_b16.py:'stage=2,stage1=gs://BUCKET/llava1,clip=runs/clip_b16,lm=runs/qwen2,train=folder:/data/llava/llava_instruct_150k.json' \\
      --workdir gs://BUCKET/llava2

clip= names any vljax workdir whose image tower (img/...) this one reads, frozen (its settings come
from its config.json); lm= the converted LLM's workdir (architecture, tokenizer and weights; its
chat template lays out the conversations, vljax/data/conversations.py). Stage 1 trains the
mlp2x_gelu projector alone (LLaVA-1.5: batch 256, lr 1e-3, one epoch of 558k pairs); stage 2 the
projector and the LLM (batch 128, lr 2e-5). bfloat16 compute, an FSDP mesh. Without clip= and lm=
it builds on the shapes world with a B/16 tower and the shapes LM (a smoke test; not measured).
"""

import common

STAGES = {"1": dict(batch=256, lr=1e-3, steps=2200), "2": dict(batch=128, lr=2e-5, steps=5200)}


def get_config(arg=None):
  args = common.parse_arg(arg, stage="1", stage1="", clip="", lm="", **common.REAL_DATA_ARGS)
  if args["stage"] not in STAGES:
    raise ValueError(f"llava_vit_b16 stage={args['stage']!r}; valid: {sorted(STAGES)}")
  if (args["stage"] == "2") != bool(args["stage1"]):
    raise ValueError("llava_vit_b16: stage=2 starts from stage1=WORKDIR (its projector), and only stage 2 does")
  stage = STAGES[args["stage"]]
  c = common.base_config(arg)
  image = dict(variant="B/16", pool="tok", posemb="learned")
  if args["clip"]:
    image = common.run_config(args["clip"], "clip").model.image.to_dict()
  c.model = dict(name="llava", image=image, text=common.shapes_language_model(max_len=320),
                 projector="mlp2x_gelu", scan=True, remat="minimal")
  c.objectives = {"captioning": 1.0}
  c.data.update(format="vlm", chunks=1, image_size=224, max_len=96, normalization="clip", num_threads=16, prefetch=8,
                vqa_fraction=0.0 if args["stage"] == "1" else 0.25,
                conversation_fraction=0.0 if args["stage"] == "1" else 0.5)
  c.init_from = dict(workdir="", subtree="", step=-1,
                     sources=(f"{args['clip']}:img",) if args["clip"] else ())
  c.frozen = ("img/.*",)
  if args["lm"]:
    c = common.pretrained_lm(c, args["lm"])
    if args["stage"] == "2":  # LLaVA's stage 2 trains the LLM
      c.frozen = ("img/.*",)
  if args["stage1"]:
    c.init_from.sources = tuple(c.init_from.sources) + (f"{args['stage1']}:projector",)
  c.batch_size = stage["batch"]
  c.total_steps = stage["steps"]
  c.optimizer = dict(name="adamw", lr=stage["lr"], b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip_norm=1.0)
  c.schedule = dict(name="warmup_cosine", warmup_steps=int(0.03 * stage["steps"]), end_fraction=0.0)
  c = common.accelerator_training(c, eval_every=1000, captioning=True)
  c.evals = dict(vqa=dict(every=1000, num_examples=256, shots=(0,)),
                 caption=dict(every=1000, num_examples=128, num_references=5, decode=dict(max_len=24)))
  return common.use_real_data(c, args, eval_every=1000)
