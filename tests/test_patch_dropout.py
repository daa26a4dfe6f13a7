"""Patch dropout (FLIP, `image.patch_dropout`): a training pass keeps a random subset of each image's
patches (their position embeddings with them, [CLS] always), evaluation sees them all, and the FLOP
count follows the kept tokens."""

import jax
import numpy as np
import pytest

from conftest import tiny_config
from test_flops import tiny_recipe, xla_step_flops
from vljax.models import get_model
from vljax.models.vit import kept_patches, make_vit

IMAGES = jax.random.normal(jax.random.PRNGKey(1), (3, 32, 32, 3))  # 16 patches of 8x8


def _vit(patch_dropout, **kw):
  return make_vit("mu/8", posemb="learned", patch_dropout=patch_dropout, **kw)


def test_training_keeps_a_random_subset_of_each_images_patches_and_evaluation_all():
  full, dropped = _vit(0.0, depth=0), _vit(0.5, depth=0)  # depth 0: the tokens are the patch embeddings, normed
  params = full.init(jax.random.PRNGKey(0), IMAGES)
  rngs = lambda seed: {"patch_dropout": jax.random.PRNGKey(seed)}  # noqa: E731
  _, want = full.apply(params, IMAGES)
  _, evaluated = dropped.apply(params, IMAGES)
  np.testing.assert_array_equal(evaluated, want)  # no dropout outside training
  _, kept = dropped.apply(params, IMAGES, train=True, rngs=rngs(0))
  assert kept.shape == (3, kept_patches(16, 0.5), 32) == (3, 8, 32)
  subsets = []
  for b in range(3):  # every kept token is one of the image's own, in order
    rows = [int(np.argmin(np.abs(np.asarray(want[b]) - np.asarray(t)).sum(axis=1))) for t in kept[b]]
    np.testing.assert_allclose(kept[b], want[b][np.array(rows)], atol=1e-6)
    assert rows == sorted(set(rows))
    subsets.append(tuple(rows))
  assert len(set(subsets)) > 1  # each image draws its own
  np.testing.assert_array_equal(dropped.apply(params, IMAGES, train=True, rngs=rngs(0))[1], kept)
  assert not np.array_equal(dropped.apply(params, IMAGES, train=True, rngs=rngs(1))[1], kept)


def test_cls_always_stays_and_bad_values_name_the_setting():
  vit = _vit(0.75, pool="tok")
  params = vit.init(jax.random.PRNGKey(0), IMAGES)
  pooled, tokens = vit.apply(params, IMAGES, train=True, rngs={"patch_dropout": jax.random.PRNGKey(0)})
  assert tokens.shape == (3, 4, 32) and pooled.shape == (3, 32)
  for bad in (1.0, -0.1, "half"):
    with pytest.raises(ValueError, match=r"ViT patch_dropout=.* is invalid; valid: a fraction in \[0, 1\)"):
      _vit(bad)
  with pytest.raises(ValueError, match=r"random stream 'patch_dropout', which this model does not declare"):
    vit.apply(params, IMAGES, train=True)


def test_a_clip_trains_with_patch_dropout_and_its_flops_count_the_kept_tokens():
  cfg = tiny_recipe("clip_shapes")
  cfg.model.image.update(patch_dropout=0.5)
  analytic, _, matmuls = xla_step_flops(cfg)
  assert analytic == pytest.approx(matmuls, rel=0.01)
  full = tiny_recipe("clip_shapes")
  assert xla_step_flops(full)[0] > 1.3 * analytic
  model = get_model(dict(cfg.model.to_dict(), text=dict(cfg.model.text.to_dict(), vocab_size=128, max_len=16)))
  assert "patch_dropout" in model.rng_streams


def test_patch_dropout_run_trains(tmp_path):
  import json
  from vljax.train.trainer import train_and_evaluate
  cfg = tiny_config(evals=dict(zeroshot=dict(every=2, num_examples=16)), total_steps=2, batch_size=8)
  cfg.model.image.update(patch_dropout=0.5)
  train_and_evaluate(cfg, str(tmp_path / "w"))
  with open(tmp_path / "w" / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert np.isfinite([r["train/loss"] for r in rows if "train/loss" in r]).all()
  assert any("eval/zeroshot/top1" in r for r in rows)
