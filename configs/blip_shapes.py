"""BLIP (ITC + ITM on hard negatives + LM) on the shapes world, on CPU in minutes.

  python -m vljax.train --config configs/blip_shapes.py --workdir runs/blip
  python -m vljax.train --config configs/blip_shapes.py:arm=itc_itm --workdir runs/blip_itc_itm
  python -m vljax.train --config configs/blip_shapes.py:arm=itc_mlm --workdir runs/blip_itc_mlm
  python -m vljax.train --config configs/blip_shapes.py:scenes=folder:runs/noisy --workdir runs/blip_noisy
  python -m vljax.train --config configs/blip_shapes.py:queue=4096 --workdir runs/blip_queue

queue=Q (arm=blip) gives ITC ALBEF's feature queue: the momentum embeddings of the last Q examples
join the batch's as negatives (objectives.momentum_contrastive.queue_size; 0, the default, keeps
none; BLIP: 57,600-65,536 against a batch of 2,880).

scenes=KIND:PATH trains on shapes scenes on disk instead of the world's stream (common.shapes_scenes_data:
a folder written by python -m vljax.capfilt.noisy_shapes, or CapFilt's array_record output), with the
same evaluations: the first step of configs/compare/capfilt_shapes.py's chain.

The image tower, text tower, batch and steps of clip_shapes.py. arm=blip (the default): the
multimodal mixture of encoder-decoder, a 2-layer image-grounded decoder whose blocks also serve as
the image-grounded encoder (fusion share="blip": all but self-attention shared), objectives
1.0 x momentum_contrastive (ITC with momentum distillation, alpha 0.4, from an EMA of the weights at
decay 0.995) + 1.0 x itm + 1.0 x captioning (BLIP's equal weights). arm=itc_itm and arm=itc_mlm: no
decoder, a 2-layer image-grounded encoder of its own, plain ITC (softmax_contrastive).
Measured on a 2-core CPU, arm=blip as above (seed 0, one run, 34 minutes with the CPU shared):
eval/zeroshot/top1 0.61, R@1 0.68 / 0.71, binding 0.54, CIDEr 2.39, train/itm_acc 0.75. Before
momentum distillation (softmax_contrastive; seed 0, one run, about 22 minutes of training): top1
0.75, retrieval i2t / t2i R@1 0.80 / 0.76, binding 0.50 (chance), caption CIDEr 2.99; train/itm_acc 0.75
at the end (0.67 is "no match" for every pair). arm=itc_itm: top1 0.71, R@1 0.75 / 0.75, binding 0.52,
itm_acc 0.72. arm=itc_mlm: top1 0.64, R@1 0.76 / 0.73, binding 0.51. Single seeds: differences of
this size are within the seed spread the README's comparison shows for CLIP (top1 0.72 +- 0.09).

The arms that train ITM (blip, itc_itm) also log retrieval and zero-shot after BLIP's ITM re-ranking
(ITM_K below; eval/retrieval/itm_i2t_r1, eval/zeroshot/itm_top1, ...: vljax/evals/itm_rerank.py),
beside the contrastive metrics of the same names without itm_. It costs about 4 s (retrieval) and
14 s (zero-shot: 640 images x 8 classes x 8 prompts) an evaluation on a 2-core CPU. After 150 steps
(arm=blip as above, seed 0, one run) the ITM head does not yet tell pairs apart (train/itm_acc 0.67, "no match"
for all) and re-ranking costs R@1: i2t 0.35 -> 0.15, t2i 0.34 -> 0.26 (zero-shot top1 0.18 -> 0.18).
After all 750 steps (itm_acc 0.75) it still does: R@1 0.68 / 0.71 -> 0.44 / 0.48, top1 0.61 -> 0.32.
"""

import common

ARMS = {
    "blip": {"momentum_contrastive": {"weight": 1.0, "alpha": 0.4}, "itm": 1.0, "captioning": 1.0},
    "itc_itm": {"softmax_contrastive": 1.0, "itm": 1.0},
    "itc_mlm": {"softmax_contrastive": 1.0, "mlm": 1.0},
}
# BLIP's k_test: each query's contrastive top k re-scored by the ITM head (vljax/evals/itm_rerank.py).
# Retrieval: 16 of 512 captions (BLIP: 256 of 25k), enough to reorder R@1..R@10; zero-shot: 8 of 64
# classes, each scored over its 8 prompts.
ITM_K = {"retrieval": 16, "zeroshot": 8}


def get_config(arg=None):
  args = common.parse_arg(arg, arm="blip", scenes="", queue="0")
  arm = args["arm"]
  if arm not in ARMS:
    raise ValueError(f"blip_shapes arm={arm!r}; valid: {sorted(ARMS)}")
  if not args["queue"].isdigit() or (int(args["queue"]) and arm != "blip"):
    raise ValueError(f"blip_shapes queue={args['queue']!r}; valid: a whole number of examples (0: no queue), "
                     "with arm=blip (the queue holds the momentum model's embeddings)")
  c = common.base_config(arg)
  model = common.shapes_contrastive()
  if arm == "blip":
    model.update(decoder=dict(variant="shapes-64", depth=2), fusion=dict(share="blip"))
  else:
    model.update(fusion=dict(share="none", variant="shapes-64", depth=2))
  c.model = model
  c.objectives = ARMS[arm]
  if int(args["queue"]):
    c.objectives = dict(c.objectives, momentum_contrastive=dict(ARMS[arm]["momentum_contrastive"],
                                                                queue_size=int(args["queue"])))
  if arm == "blip":  # the momentum model: an EMA of the weights (BLIP: 0.995), fresh early on (warmup)
    c.ema = dict(decay=0.995, warmup=True, evaluate="raw")
  c = common.shapes_training(c)
  if args["scenes"]:
    c.data.update(common.shapes_scenes_data(args["scenes"]))
  # The arms that train the ITM head also report retrieval and zero-shot after its re-ranking.
  rerank = {name: dict(itm_k=k) for name, k in ITM_K.items()} if "itm" in ARMS[arm] else {}
  c.evals = common.shapes_evals(every=250, captioning=arm == "blip", **rerank)
  return c
