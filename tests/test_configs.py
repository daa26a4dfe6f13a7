"""Every recipe loads, validates, and builds its model (abstractly: no weights allocated)."""

import glob
import os

import jax
import numpy as np
import pytest

from vljax import config as config_lib
from vljax.train import setup, state as state_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


load_recipe = config_lib.load_config


def test_every_recipe_has_command_and_expectation_in_docstring():
  for path in RECIPES:
    with open(path) as f:
      head = f.read(2000)
    assert "python -m vljax.train --config configs/" in head, path


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_recipe_builds(path):
  cfg = load_recipe(path)
  cfg.evals = {}  # evaluators render their sets; not needed to check the model
  parts = setup.build(cfg)
  inputs = state_lib.dummy_inputs(cfg, 1)
  shapes = jax.eval_shape(lambda r: parts.model.init(r, **inputs)["params"], jax.random.PRNGKey(0))
  count = sum(int(np.prod(x.value.shape if hasattr(x, "value") else x.shape)) for x in jax.tree.leaves(
      shapes, is_leaf=lambda x: hasattr(x, "value")))
  assert count > 0
  if os.path.basename(path) == "clip_vit_b16.py":
    assert 120e6 < count < 160e6, count  # ViT-B/16 (86M) + 12-layer 512-wide text tower (~38M)
  if os.path.basename(path) == "coca_vit_b16.py":
    # CoCa-Base (383M with its 64k vocabulary) less the two 64k x 768 embedding tables: on the
    # shapes vocabulary, ViT-B/16 86M + poolers 14M + 12 unimodal 85M + 12 multimodal 114M layers.
    assert 280e6 < count < 320e6, count
