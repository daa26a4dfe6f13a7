"""configs/compare/vit_b16_objectives.py at test size: the same argument, data, evaluations and
budget rule, two of its arms (CLIP, scored by embeddings; CapPa, by caption likelihood) with every
tower cut to one layer of tests' width, a few steps at 32 px. What tests/test_compare_real.py runs:

  python -m vljax.compare --suite tests/b16_suite_tiny.py:scale=small,train=...,tokenizer=... --workdir DIR
"""

import os

from vljax import config as config_lib

SUITE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "compare",
                     "vit_b16_objectives.py")
ARMS = ("clip", "cappa")
STEPS = 4  # CLIP's; CapPa's follow from the FLOP budget
RUN = (("data.image_size", 32), ("data.max_len", 12), ("data.workers", 0), ("data.num_threads", 1),
       ("batch_size", 16), ("total_steps", STEPS), ("schedule.warmup_steps", 2),
       ("precision.compute_dtype", "float32"), ("eval_batch_size", 32), ("checkpoint.async_save", False),
       ("log_every", 1), ("progress_bar", False))


def tiny_model(model: dict) -> dict:
  """The arm's model with each tower and head at tests' size (one layer, width 32)."""
  model = dict(model, image=dict(model["image"], variant="mu/8", depth=1), scan=False, remat="none")
  if model.get("text"):
    model["text"] = dict(model["text"], variant="mu", depth=1)
  if model.get("contrastive"):
    model["contrastive"] = dict(model["contrastive"], embed_dim=16)
  if model.get("decoder"):
    queries = model["decoder"].get("memory_queries", 0)
    model["decoder"] = dict(model["decoder"], variant="mu", depth=1, memory_queries=min(queries, 4))
  return model


def get_config(arg=None):
  c = config_lib.load_config(SUITE, arg)
  arms = {}
  for name in ARMS:
    arm = c.arms[name].to_dict()
    arm["overrides"] = tuple((k, tiny_model(v) if k == "model" else v) for k, v in arm["overrides"])
    arms[name] = arm
  c.arms = arms
  c.overrides = (*c.overrides, *RUN)
  c.eval_points = 1
  return c
