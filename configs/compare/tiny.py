"""Two arms, two seeds, a few steps of test-sized towers: what CI runs end to end (tests/test_compare.py).

  python -m vljax.compare --suite configs/compare/tiny.py --workdir runs/compare_tiny

CLIP on clean captions against CLIP with half its captions replaced by unrelated web-like text, on
tiny_config's towers (tests/conftest.py) cut to one layer each, matched in model FLOPs (equal here: the arms differ in
data alone, so they also compile the same programs, which keeps the test short). Numbers mean
nothing at this size; the test checks the report against the runs' own metrics.
"""

import ml_collections

import common

TINY_MODEL = dict(name="composable", image=dict(variant="mu/8", depth=1, pool="gap", posemb="sincos2d"),
                  text=dict(variant="mu", depth=1, causal=False, pool="last"),
                  contrastive=dict(embed_dim=16, logit_scale_init=10.0))


def get_config(arg=None):
  common.parse_arg(arg)  # no argument: any item is an error naming it
  c = ml_collections.ConfigDict()
  c.seeds = (0, 1)
  c.budget = dict(match="flops", like="clip")
  c.overrides = (("model", TINY_MODEL), ("data.image_size", 32), ("data.max_len", 12), ("data.num_threads", 1),
                 ("batch_size", 16), ("total_steps", 4), ("optimizer.lr", 3e-3), ("schedule.warmup_steps", 2),
                 ("eval_batch_size", 32), ("checkpoint.async_save", False), ("log_every", 1),
                 ("progress_bar", False))
  c.arms = dict(clip=dict(recipe="clip_shapes.py"),
                clip_noisy=dict(recipe="clip_shapes.py", overrides=(("data.caption_noise", 0.5),)))
  c.evals = dict(fewshot=dict(shots=(1, 5), num_draws=2, num_examples=72, num_pool=128, tasks=("color", "shape")),
                 zeroshot=dict(num_examples=32))
  c.eval_points = 2
  c.rank_by = ("eval/fewshot/color_5shot", "eval/zeroshot/top1")
  return c
