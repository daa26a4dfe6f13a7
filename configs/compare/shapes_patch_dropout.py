"""FLIP's patch dropout and EMA weights on CLIP at equal wall time: each arm trains for the seconds
CLIP's steps take on this machine (budget match="seconds": every arm's step timed, arms interleaved),
so an arm whose step is cheaper trains more steps. 3 seeds, the same frozen-encoder evaluations as
shapes_objectives.py.

  python -m vljax.compare --suite configs/compare/shapes_patch_dropout.py --workdir runs/patch_dropout
  python -m vljax.compare --suite configs/compare/shapes_patch_dropout.py:steps=300,seeds=2,batch=128 --workdir DIR

Arms: clip, flip50 / flip75 (half / three quarters of each training image's patches dropped; all of
them at evaluation), and clip_ema / flip50_ema (the same, evaluated with an EMA of the weights,
decay 0.998 with timm's warmup). The image tower is clip_shapes.py's conv stem followed by `depth`
transformer layers (default 4) over its 8x8 tokens, which is where dropped patches save time; the
conv stem sees every pixel either way. steps=N: CLIP's steps, which set the budget (default 750);
batch=N: every arm's batch (default the recipe's 256).
"""

import ml_collections

import common

ARMS = ("clip", "flip50", "flip75", "clip_ema", "flip50_ema")


def get_config(arg=None):
  a = common.parse_arg(arg, steps="750", seeds="3", depth="4", batch="256", arms="+".join(ARMS))
  for key in ("steps", "seeds", "depth", "batch"):
    if not a[key].isdigit() or int(a[key]) < (0 if key == "depth" else 1):
      raise ValueError(f"shapes_patch_dropout {key}={a[key]!r}; valid: a whole number >= "
                       f"{0 if key == 'depth' else 1}")
  names = a["arms"].split("+")
  if "clip" not in names or set(names) - set(ARMS):
    raise ValueError(f"shapes_patch_dropout arms={a['arms']!r}; valid: names from {list(ARMS)} joined by '+', "
                     "clip among them (the budget is its)")
  tower = dict(common.SHAPES_IMAGE_TOWER, depth=int(a["depth"]), pool="max")
  ema = ("ema", dict(decay=0.998, warmup=True, evaluate="ema"))
  arms = dict(
      clip=dict(recipe="clip_shapes.py"),
      flip50=dict(recipe="clip_shapes.py", overrides=(("model.image", dict(tower, patch_dropout=0.5)),)),
      flip75=dict(recipe="clip_shapes.py", overrides=(("model.image", dict(tower, patch_dropout=0.75)),)),
      clip_ema=dict(recipe="clip_shapes.py", overrides=(ema,)),
      flip50_ema=dict(recipe="clip_shapes.py", overrides=(("model.image", dict(tower, patch_dropout=0.5)), ema)),
  )
  c = ml_collections.ConfigDict()
  c.seeds = tuple(range(int(a["seeds"])))
  c.budget = dict(match="seconds", like="clip")
  c.overrides = (("model.image", tower), ("total_steps", int(a["steps"])), ("batch_size", int(a["batch"])))
  c.arms = {name: arms[name] for name in names}
  c.evals, c.rank_by = common.frozen_encoder_suite_evals()
  c.eval_points = 3
  return c
