"""SigLIP 2's recipe against SigLIP on the shapes world at matched model FLOPs: the sigmoid loss alone
(siglip_shapes.py) against sigmoid + LocCa's decoder, then self-distillation and masked prediction
for the last 20% (siglip2_shapes.py), on the same image tower (a conv stem and one transformer
layer), judged by the same frozen-encoder evaluations; the referring-expression box accuracy for the
arms with LocCa's decoder only (the others have no box head, so it ranks none).

  python -m vljax.compare --suite configs/compare/shapes_siglip2.py --workdir runs/siglip2
  python -m vljax.compare --suite configs/compare/shapes_siglip2.py:steps=600,seeds=2 --workdir DIR

Arms: siglip, siglip2, and (arms=...) siglip2_nolocca (siglip2_shapes.py:locca=0: the self-distillation
and masked prediction without the decoder). The budget is what SigLIP spends in `steps` (default its
recipe's 1000); siglip2's decoder is in its model FLOP count, so it trains fewer steps. The EMA
teacher's and the local crops' passes in the last 20% are in no model's count: the report lists
those objectives, and the siglip2 arms spend that much more than the budget.
"""

import ml_collections

import common

ARMS = dict(
    siglip=dict(recipe="siglip_shapes.py", overrides=(("model.image.depth", 1),)),
    siglip2=dict(recipe="siglip2_shapes.py"),
    siglip2_nolocca=dict(recipe="siglip2_shapes.py:locca=0"),
)
WITH_DECODER = ("siglip2",)


def get_config(arg=None):
  a = common.parse_arg(arg, steps="1000", seeds="3", arms="siglip+siglip2")
  for key in ("steps", "seeds"):
    if not a[key].isdigit() or int(a[key]) < 1:
      raise ValueError(f"shapes_siglip2 {key}={a[key]!r}; valid: a whole number >= 1")
  names = a["arms"].split("+")
  if "siglip" not in names or set(names) - set(ARMS) or len(set(names)) != len(names):
    raise ValueError(f"shapes_siglip2 arms={a['arms']!r}; valid: distinct names from {list(ARMS)} joined by "
                     "'+', siglip among them (the budget is its)")
  c = ml_collections.ConfigDict()
  c.seeds = tuple(range(int(a["seeds"])))
  c.budget = dict(match="flops", like="siglip")
  c.overrides = (("total_steps", int(a["steps"])),)
  c.arms = {name: ARMS[name] for name in names}
  c.evals, c.rank_by = common.frozen_encoder_suite_evals()
  decoders = [n for n in names if n in WITH_DECODER]
  if decoders:
    c.evals.refexp = dict(num_examples=256, arms=tuple(decoders))
  c.eval_points = 3
  return c
