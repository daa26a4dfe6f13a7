"""Two arms, two seeds, a few steps of test-sized towers: what CI runs end to end (tests/test_compare.py).

  python -m vljax.compare --suite configs/compare/tiny.py --workdir runs/compare_tiny

CLIP against NegCLIP (CLIP plus swapped-caption hard negatives) on the towers of tests/conftest.py's
tiny_config, matched in model FLOPs: NegCLIP's batch is half CLIP's, so it gets twice the steps.
Numbers mean nothing at this size; the test checks the report against the runs' own metrics.
"""

import ml_collections

TINY_MODEL = dict(name="composable", image=dict(variant="mu/8", pool="gap", posemb="sincos2d"),
                  text=dict(variant="mu", causal=False, pool="last"),
                  contrastive=dict(embed_dim=16, logit_scale_init=10.0))


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.seeds = (0, 1)
  c.budget = dict(match="flops", like="clip")
  c.overrides = (("model", TINY_MODEL), ("data.image_size", 32), ("data.max_len", 12), ("data.num_threads", 1),
                 ("batch_size", 16), ("total_steps", 4), ("optimizer.lr", 3e-3), ("schedule.warmup_steps", 2),
                 ("eval_batch_size", 32), ("checkpoint.async_save", False), ("log_every", 1),
                 ("progress_bar", False))
  c.arms = dict(clip=dict(recipe="clip_shapes.py"),
                negclip=dict(recipe="negclip_shapes.py", overrides=(("batch_size", 8),)))
  c.evals = dict(fewshot=dict(shots=(1, 5), num_draws=2, num_examples=72, num_pool=128, tasks=("color", "shape")),
                 zeroshot=dict(num_examples=32))
  c.eval_points = 2
  c.rank_by = ("eval/fewshot/color_5shot", "eval/zeroshot/top1")
  return c
