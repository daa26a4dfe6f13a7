"""Pretraining objectives on the shapes world at matched model FLOPs, 3 seeds, judged by the same
frozen-encoder evaluations: CLIP, SigLIP, CoCa, CapPa, Cap (autoregressive captioning only), NegCLIP
(CLIP plus swapped-caption hard negatives), and BLIP's (blip_shapes.py): BLIP (ITC with momentum
distillation + ITM on mined hard negatives + LM through the shared decoder), ITC + ITM, ITC + MLM.

  python -m vljax.compare --suite configs/compare/shapes_objectives.py --workdir runs/shapes_objectives
  python -m vljax.compare --suite configs/compare/shapes_objectives.py:arms=clip+blip+itc_itm --workdir DIR

`arms=` (names joined by "+") runs a subset, each arm as in the whole suite (the budget stays CLIP's).

Every arm trains the same image tower (clip_shapes.py's conv stem into a max pool: what the
few-shot probe reads) at batch 256, for the FLOPs CLIP spends in its recipe's 750 steps. CLIP,
SigLIP and NegCLIP share one text tower; CoCa's has the same size but is causal with a [CLS]
token (its captioning decoder continues from it); CapPa and Cap have none. Each arm keeps the rest of
its recipe (SigLIP's scale and bias, CoCa's poolers, CapPa's parallel prediction). Zero-shot,
retrieval and compositionality score with contrastive embeddings where the model has them and by
caption log-likelihood otherwise (CapPa, Cap), with sets sized for the latter.
NegCLIP's twin captions are a second text-tower pass that the model FLOP count leaves out; BLIP's
fusion passes (ITM on three pairs an example, MLM) are counted, so its arms train fewer steps.
27 runs one after another on a 2-core CPU: several hours (README "Comparing objectives").
"""

import ml_collections

import common

SHARED_IMAGE_TOWER = dict(common.SHAPES_IMAGE_TOWER, pool="max")


ARMS = dict(
    clip=dict(recipe="clip_shapes.py"),
    siglip=dict(recipe="siglip_shapes.py"),
    coca=dict(recipe="coca_shapes.py"),
    cappa=dict(recipe="cappa_shapes.py"),
    cap=dict(recipe="cappa_shapes.py", overrides=(("model.decoder.mode", "autoregressive"),)),
    negclip=dict(recipe="negclip_shapes.py"),
    blip=dict(recipe="blip_shapes.py:arm=blip"),
    itc_itm=dict(recipe="blip_shapes.py:arm=itc_itm"),
    itc_mlm=dict(recipe="blip_shapes.py:arm=itc_mlm"),
)


def get_config(arg=None):
  names = common.parse_arg(arg, arms="+".join(ARMS))["arms"].split("+")
  unknown = [n for n in names if n not in ARMS]
  if unknown or not names:
    raise ValueError(f"shapes_objectives arms={unknown or names}; valid: names from {sorted(ARMS)} joined by '+'")
  if "clip" not in names:
    raise ValueError(f"shapes_objectives arms={'+'.join(names)}: the budget is CLIP's and the paired differences "
                     "are against it; include clip")
  c = ml_collections.ConfigDict()
  c.seeds = (0, 1, 2)
  c.budget = dict(match="flops", like="clip")
  c.overrides = (("model.image", SHARED_IMAGE_TOWER), ("batch_size", 256))
  c.arms = {name: ARMS[name] for name in names}
  c.evals = dict(
      fewshot=dict(),  # 1/5/10/25 shots, 5 draws: color, shape, position, count
      zeroshot=dict(num_examples=320, templates=("a photo of a {}.", "a {}.")),
      retrieval=dict(num_examples=256),
      binding=dict(num_examples=512),
      compositionality=dict(num_examples=256),
  )
  c.eval_points = 3
  c.rank_by = ("eval/fewshot/shape_10shot", "eval/fewshot/color_10shot", "eval/fewshot/count_10shot",
               "eval/zeroshot/top1", "eval/retrieval/i2t_r1", "eval/retrieval/t2i_r1", "eval/binding/acc",
               "eval/compositionality/acc")
  return c
