"""BLIP-2 on a ViT-B/16 image tower and a pretrained LLM: the real-scale recipe, for accelerators.

  python -m vljax.convert --checkpoint /ckpt/clip-vit-base-patch16 --workdir runs/clip_b16
  python -m vljax.convert --checkpoint /ckpt/opt-2.7b --workdir runs/opt
  # stage 1: the Q-Former on the frozen image tower (ITC + ITM + ITG), on image-text pairs
  python -m vljax.train --config configs/blip2_vit_b16.py:'clip=runs/clip_b16,train=array_record:/data/cc3m/*.array_record,tokenizer=hf:/ckpt/bert-base-uncased/tokenizer.json,retrieval=/data/coco_karpathy_test.jsonl' \\
      --workdir gs://BUCKET/blip2_1
  # stage 2: its query outputs as the soft prompt of the frozen LLM
  python -m vljax.train --config configs/blip2_vit_b16.py:'stage=2,stage1=gs://BUCKET/blip2_1,lm=runs/opt,train=array_record:/data/cc3m/*.array_record' \\
      --workdir gs://BUCKET/blip2_2
  # or stage 2 into a frozen FlanT5 (BLIP-2's encoder-decoder form, model prefix_lm)
  python -m vljax.convert --checkpoint /ckpt/flan-t5-xl --workdir runs/flan_t5
  python -m vljax.train --config configs/blip2_vit_b16.py:'stage=2,stage1=gs://BUCKET/blip2_1,t5=runs/flan_t5,train=...' \\
      --workdir gs://BUCKET/blip2_2_t5

Stage 1: 32 queries, a Q-Former of BERT-base's size (12 layers of width 768, cross-attention every
other block), embed 256, batch 2048, lr 1e-4 (BLIP-2's pretraining, at its ViT-B scale). clip= names
any vljax workdir whose image tower it reads (settings from its config.json), frozen. Stage 2 reads
the image tower and the Q-Former from stage 1 (the Q-Former's settings and text positions from its
config.json, its text half frozen and unused), the LLM from lm= (a converted workdir: architecture,
tokenizer, weights; frozen), or a FlanT5 from t5= (the prompt into its encoder, the target through
its decoder: vljax/models/prefix_lm.py), and trains the queries' Q-Former and the projection. Without arguments
it builds on the shapes world with a B/16 tower (a smoke test; not measured).
"""

import common
from vljax.data import tokenizers
from vljax.models import resolve

STAGES = {"1": dict(batch=2048, lr=1e-4, steps=250_000), "2": dict(batch=1024, lr=1e-4, steps=80_000)}
QFORMER = dict(variant="L", depth=12)  # BERT-base: width 768, 12 heads, MLP 3072
NUM_QUERIES, CROSS_EVERY = 32, 2


def get_config(arg=None):
  args = common.parse_arg(arg, stage="1", stage1="", clip="", lm="", t5="", **common.REAL_DATA_ARGS)
  if args["stage"] not in STAGES:
    raise ValueError(f"blip2_vit_b16 stage={args['stage']!r}; valid: {sorted(STAGES)}")
  if (args["stage"] == "2") != bool(args["stage1"]):
    raise ValueError("blip2_vit_b16: stage=2 starts from stage1=WORKDIR (its image tower and Q-Former), and only "
                     "stage 2 does")
  if (args["lm"] or args["t5"]) and args["stage"] != "2" or (args["lm"] and args["t5"]):
    raise ValueError("blip2_vit_b16: lm= (a decoder-only LLM) or t5= (an encoder-decoder one) is stage 2's "
                     "language model; give at most one, with stage=2")
  stage = STAGES[args["stage"]]
  c = common.base_config(arg)
  c.data.update(image_size=224, normalization="clip", num_threads=16, prefetch=8)
  if args["stage"] == "1":
    image = common.run_config(args["clip"], "clip").model.image.to_dict() if args["clip"] else dict(
        variant="B/16", pool="tok", posemb="learned")
    c.model = dict(name="qformer", image=image, text=QFORMER, num_queries=NUM_QUERIES, cross_every=CROSS_EVERY,
                   embed_dim=256)
    c.objectives = {"softmax_contrastive": 1.0, "itm": 1.0, "captioning": 1.0}
    c.data.update(max_len=32)
    c.init_from = dict(workdir="", subtree="", step=-1, sources=(f"{args['clip']}:img",) if args["clip"] else ())
    c.frozen = ("img/.*",)
  else:
    first = common.run_config(args["stage1"], "stage1")
    vocab = resolve.padded_vocab_size(tokenizers.get_tokenizer(first.data.tokenizer).vocab_size)
    qformer = dict(first.model.text.to_dict(), num_queries=first.model.num_queries,
                   cross_every=first.model.cross_every, vocab_size=vocab, max_len=first.data.max_len)
    c.model = dict(name="llava", image=first.model.image.to_dict(), text=common.shapes_language_model(),
                   projector="qformer", qformer=qformer)
    c.objectives = {"captioning": 1.0}
    c.data.update(format="vlm", chunks=1, max_len=64, vqa_fraction=0.0)
    c.init_from = dict(workdir="", subtree="", step=-1, sources=(f"{args['stage1']}:img,qformer",))
    c.frozen = ("img/.*", "qformer/(embedding|posemb)/.*", r"qformer/encoder/block_\d+/(ln2|mlp)/.*")
    if args["lm"]:
      c = common.pretrained_lm(c, args["lm"])
    if args["t5"]:
      c = common.pretrained_seq2seq(c, args["t5"])
  if args["stage"] == "2" and not args["t5"]:
    c.model.update(scan=True, remat="minimal")  # the LLM's layers (the Q-Former loops its own; T5 loops)
  c.batch_size = stage["batch"]
  c.total_steps = stage["steps"]
  c.optimizer = dict(name="adamw", lr=stage["lr"], b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.05, grad_clip_norm=1.0)
  c.schedule = dict(name="warmup_cosine", warmup_steps=2000, end_fraction=0.0)
  c = common.accelerator_training(c, eval_every=5000)
  if args["stage"] == "2":  # an image-prompted LM: captions and answers, no image-text scores
    c.evals = dict(vqa=dict(every=5000, num_examples=256, shots=(0,)),
                   caption=dict(every=5000, num_examples=128, num_references=5, decode=dict(max_len=24)))
  return common.use_real_data(c, args, eval_every=5000)
