"""Does CapFilt's bootstrapped dataset pretrain a better model than the noisy one it came from? One
recipe trained from scratch on each dataset, at equal compute, 3 seeds, judged by the same
frozen-encoder evaluations on the shapes world: BLIP's step 3 (pretrain again on the bootstrapped data)
as a controlled experiment. The chain (paths are examples; the README has the figures):

  # 20,000 scenes whose web caption is wrong half the time, and the same scenes with their true captions
  python -m vljax.capfilt.noisy_shapes --output runs/chain/noisy --num_images 20000 --noise 0.5
  python -m vljax.capfilt.noisy_shapes --output runs/chain/clean --num_images 20000 --noise 0
  # 1. BLIP (ITC with momentum distillation + ITM + LM) trained on the noisy data: captioner and filter
  python -m vljax.train --config configs/blip_shapes.py:scenes=folder:runs/chain/noisy --workdir runs/chain/blip
  # 2. CapFilt: the filter alone, and the filter with one synthetic caption an image
  python -m vljax.capfilt --captioner runs/chain/blip --filter runs/chain/blip --input runs/chain/noisy \\
      --output runs/chain/filtered --captions_per_image 0
  python -m vljax.capfilt --captioner runs/chain/blip --filter runs/chain/blip --input runs/chain/noisy \\
      --output runs/chain/bootstrapped --captions_per_image 1
  python -m vljax.capfilt.score --data runs/chain/noisy --capfilt runs/chain/bootstrapped
  # 3. pretrain again on each dataset
  python -m vljax.compare --suite configs/compare/capfilt_shapes.py:'model=blip,noisy=runs/chain/noisy,\\
      filtered=runs/chain/filtered,bootstrapped=runs/chain/bootstrapped,clean=runs/chain/clean' \\
      --workdir runs/chain/compare_blip

The argument (comma-separated KEY=VALUE):
  model         blip (configs/blip_shapes.py, the default) or clip (configs/clip_shapes.py: what the
                datasets are worth to a contrastive model alone, at a third of BLIP's step time)
  noisy         the noisy_shapes folder (required: the baseline and the budget's arm)
  filtered, bootstrapped   CapFilt output directories (ArrayRecord shards): arms when given
  clean         the same scenes' noisy_shapes folder at --noise 0: the ceiling, when given
  seeds         runs per arm (default 3)
  steps         every run's steps (default: the recipe's 750), all arms the same FLOPs either way

Measured (model=blip, steps=375, the three datasets above, 3 seeds, 75 minutes on a 2-core CPU; the
README's CapFilt section, report in docs/results/capfilt_shapes_blip): retrieval R@1 0.44 / 0.41 on
the noisy data, 0.57 / 0.57 filtered, 0.59 / 0.58 bootstrapped; filtered and bootstrapped beat noisy
beyond the seed spread on t2i (filtered on i2t too), and not each other; zero-shot stays near chance
(0.16-0.18) for all, as no arm learns shapes at this budget.

Every arm is the same recipe (towers, batch 256, schedule) on other data, so the budget (the steps
of the recipe's 750 on the noisy data) gives each the same steps and FLOPs. Scenes on disk are read
whole (crop_scale 1) and evaluated on the world's fixed eval sets (data.shapes_scenes). Comparing
against `noisy` is at equal pretraining compute; the bootstrapped arms also had step 1's run and
CapFilt's pass spent on them.
"""

import ml_collections

import common

RECIPES = {"blip": "blip_shapes.py", "clip": "clip_shapes.py"}
DATASETS = {"noisy": "folder", "filtered": "array_record", "bootstrapped": "array_record", "clean": "folder"}


def get_config(arg=None):
  args = common.parse_arg(arg, model="blip", seeds="3", steps="", **{name: "" for name in DATASETS})
  if args["model"] not in RECIPES:
    raise ValueError(f"capfilt_shapes model={args['model']!r}; valid: {sorted(RECIPES)}")
  if not args["noisy"]:
    raise ValueError("capfilt_shapes needs noisy=DIR (python -m vljax.capfilt.noisy_shapes's output): the "
                     "baseline every other arm is compared with")
  if not args["seeds"].isdigit() or int(args["seeds"]) < 1:
    raise ValueError(f"capfilt_shapes seeds={args['seeds']!r}; valid: an integer >= 1")
  if args["steps"] and (not args["steps"].isdigit() or int(args["steps"]) < 1):
    raise ValueError(f"capfilt_shapes steps={args['steps']!r}; valid: an integer >= 1")
  c = ml_collections.ConfigDict()
  c.seeds = tuple(range(int(args["seeds"])))
  # The arms differ in data alone: the same steps are the same FLOPs.
  c.budget = dict(match="steps", value=int(args["steps"])) if args["steps"] else dict(match="flops", like="noisy")
  c.arms = {}
  for name, kind in DATASETS.items():
    if args[name]:
      data = common.shapes_scenes_data(f"{kind}:{args[name]}")
      c.arms[name] = dict(recipe=RECIPES[args["model"]],
                          overrides=tuple((f"data.{key}", value) for key, value in data.items()))
  c.evals = dict(
      fewshot=dict(),  # 1/5/10/25 shots, 5 draws: color, shape, position, count
      zeroshot=dict(num_examples=320, templates=("a photo of a {}.", "a {}.")),
      retrieval=dict(num_examples=256),
      binding=dict(num_examples=512),
  )
  c.eval_points = 2
  c.rank_by = ("eval/zeroshot/top1", "eval/retrieval/i2t_r1", "eval/retrieval/t2i_r1", "eval/fewshot/shape_10shot",
               "eval/fewshot/color_10shot", "eval/binding/acc")
  return c
