"""NaFlex: the tower equals the fixed-resolution ViT on square images, padding changes nothing, the
host resize keeps aspect under the budget, and a tiny model trains and evaluates on mixed aspect ratios."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from conftest import tiny_config
from vljax.data import images, naflex as host, pipeline
from vljax.data.tokenizers import ShapesTokenizer
from vljax.evals.arrays import world_images
from vljax.models import naflex
from vljax.models.composable import Composable, resolve_config

PATCH = 8
TOWER = dict(variant="mu/8", depth=1, pool="map", posemb="learned")  # MAP: the pool with the most to mask


def _model(pool="map", naflex_on=True):
  image = dict(TOWER, pool=pool, **({"naflex": dict(posemb_grid=4)} if naflex_on else {}))
  return Composable.from_config(dict(image=image, text=dict(variant="mu", depth=1, causal=False, pool="last"),
                                     contrastive=dict(embed_dim=16)))


def _pixels(height, width, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def fixed():
  """A fixed-resolution model's params (32x32 images: a 4x4 patch grid) and the tower under NaFlex."""
  model = _model(naflex_on=False)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), method="encode_image")  # the image side
  return model, nn.unbox(params["params"]), _model()


_ENCODERS = {}


def _pooled(model, params, image):
  if id(model) not in _ENCODERS:  # one jitted function per model: its compilations are cached by shape
    _ENCODERS[id(model)] = (model, jax.jit(lambda p, x: model.apply({"params": p}, image=x,
                                                                   method="encode_image")["img_emb"]))
  return np.asarray(_ENCODERS[id(model)][1](params, jnp.asarray(image)))


def test_square_image_gives_the_fixed_resolution_features(fixed):
  model, params, nf = fixed
  pixels = np.stack([_pixels(32, 32, s) for s in range(3)])
  want = _pooled(model, params, images.normalize(pixels))
  packed = host.pack_batch(list(pixels), dict(patch=PATCH, max_patches=16))  # the fixed model's 4x4 grid
  np.testing.assert_allclose(_pooled(nf, params, packed), want, atol=2e-6)
  # And back: a NaFlex model created from a packed batch has the fixed model's param names and shapes.
  own = jax.eval_shape(lambda: nf.init(jax.random.PRNGKey(3), jnp.asarray(packed), method="encode_image"))
  assert jax.tree.map(jnp.shape, nn.unbox(own["params"])) == jax.tree.map(jnp.shape, params)


def test_padding_changes_no_feature(fixed):
  _, params, nf = fixed
  pixels = [_pixels(16, 48, 1), _pixels(40, 24, 2)]  # 2x6 and 5x3 patches of a 12-patch budget
  short = host.pack_batch(pixels, dict(patch=PATCH, max_patches=12))
  long = np.zeros((2, 40) + short.shape[2:], np.float32)
  long[:, :12] = short
  np.testing.assert_allclose(_pooled(nf, params, long), _pooled(nf, params, short), atol=2e-6)


def test_resize_keeps_aspect_and_budget_with_sides_multiples_of_the_patch():
  rng = np.random.default_rng(0)
  for _ in range(300):
    height, width = (int(v) for v in rng.integers(1, 600, 2))
    patch, budget = int(rng.integers(2, 17)), int(rng.integers(1, 300))
    h, w = host.grid_for(height, width, patch, budget)
    assert 1 <= h and 1 <= w and h * w <= budget
    if budget >= host.min_patches(width / height) + 1:  # not squeezed: the aspect of the nearest grid
      assert abs(math.log((w / h) / (width / height))) <= abs(math.log((w + 1) / h / (width / height))) + 1e-9 or \
          (h + 1) * w > budget or h * (w + 1) > budget
    if budget >= 4:  # the budget is used: a grid one patch larger each way would not fit
      assert (h + 1) * (w + 1) > budget
  assert host.grid_for(64, 64, 8, 64) == (8, 8) and host.grid_for(64, 128, 8, 32) == (4, 8)
  resized = host.resize_to_grid(_pixels(30, 70), host.grid_for(30, 70, PATCH, 20), PATCH)
  assert resized.shape[0] % PATCH == 0 and resized.shape[1] % PATCH == 0
  packed = host.pack(_pixels(30, 70), PATCH, 20)
  h, w = host.grid_for(30, 70, PATCH, 20)
  assert packed.shape == (20, PATCH * PATCH + 1, 3) and packed[:, -1, 2].sum() == h * w
  np.testing.assert_array_equal(packed[:h * w, -1, :2], np.stack(np.divmod(np.arange(h * w), w), -1))


def test_posemb_resampling_is_the_learned_grid_when_sizes_match():
  grids = ((4, 4), (2, 7), (9, 1), (3, 5))  # the learned 4x4 grid itself, then up- and downsampled
  coords, valid = np.zeros((len(grids), 16, 2), np.int32), np.zeros((len(grids), 16), bool)
  for i, (h, w) in enumerate(grids):
    coords[i, :h * w] = np.stack(np.divmod(np.arange(h * w), w), -1)
    valid[i, :h * w] = True
  resample = jax.jit(naflex.resample_posemb)
  pe = jax.random.normal(jax.random.PRNGKey(2), (16, 8))
  np.testing.assert_allclose(resample(pe, coords, valid)[0], pe, atol=1e-6)
  # Any other grid interpolates: a constant table stays constant (the weights sum to one), up or down.
  out = resample(jnp.full((16, 8), 0.5), coords, valid)
  np.testing.assert_allclose(np.asarray(out)[valid], 0.5, atol=1e-6)


def test_pipeline_and_evaluators_feed_mixed_aspect_ratios():
  data = dict(name="shapes", image_size=32, max_len=12, num_threads=1,
              naflex=dict(max_patches=16, patch=PATCH, aspect=(0.5, 2.0)))
  first = [next(iter(pipeline.make_train_dataset(data, ShapesTokenizer(), global_batch_size=8, seed=0)))
           for _ in range(2)]
  np.testing.assert_array_equal(first[0]["image"], first[1]["image"])  # a function of the example index
  image = first[0]["image"]
  assert image.shape == (8, 16, PATCH * PATCH + 1, 3)
  grids = {tuple(naflex.grid_sizes(jnp.asarray(np.round(m[None, :, :2]).astype(np.int32)),
                                   jnp.asarray(m[None, :, 2] > 0.5))[0].tolist()) for m in image[:, :, -1]}
  assert len(grids) > 1  # several aspect ratios in one batch
  world = pipeline.make_world(data)
  evaluated = world_images([world.zeroshot_example(i) for i in range(4)], data)
  assert evaluated.shape == (4, 16, PATCH * PATCH + 1, 3)


def test_real_source_crops_keep_their_aspect_and_corrupt_images_are_skipped_and_counted(tmp_path):
  from real_data import write_folder
  from vljax.data.sources import skips
  samples = [dict(image=_pixels(24 + 8 * (i % 5), 64 - 6 * (i % 4), i), caption=["a red circle"]) for i in range(12)]
  samples[3]["image"] = b"not an image"
  data = dict(name="folder", path=write_folder(tmp_path, samples, fmt="PNG"), image_size=32, max_len=12,
              num_threads=1, prefetch=1, naflex=dict(max_patches=16, patch=PATCH))
  pipeline.check_data_config(data)
  it = iter(pipeline.make_train_dataset(data, ShapesTokenizer(), global_batch_size=8, seed=0))
  batches = [next(it) for _ in range(3)]
  assert all(b["image"].shape == (8, 16, PATCH * PATCH + 1, 3) for b in batches)
  assert sum(skips.counts_dict(b[pipeline.SKIPPED_KEY]).get("corrupt_image", 0) for b in batches) >= 1
  valid = np.concatenate([b["image"][:, :, -1, 2].sum(axis=1) for b in batches])
  assert len(set(valid.tolist())) > 1 and valid.max() <= 16  # crops of several aspects under the budget


def test_tiny_model_trains_and_evaluates_on_mixed_aspect_ratios(tmp_path):
  from vljax.train.trainer import train_and_evaluate
  cfg = tiny_config(total_steps=3, evals=dict(zeroshot=dict(every=3, num_examples=16)))
  cfg.model.image = dict(TOWER, pool="gap", naflex=dict(posemb_grid=4))
  cfg.data.naflex = dict(max_patches=16, patch=PATCH, aspect=(0.5, 2.0))
  cfg.checkpoint.every = 3
  final = train_and_evaluate(cfg, str(tmp_path / "w"))
  losses = [r["train/loss"] for r in map(json.loads, (tmp_path / "w" / "metrics.jsonl").read_text().splitlines())
            if "train/loss" in r]
  assert len(losses) == 3 and all(map(math.isfinite, losses))
  assert 0 <= final["eval/zeroshot/top1"] <= 1


@pytest.mark.parametrize("naflex_cfg, message", [
    (dict(max_patches=0, patch=8), "max_patches=0 is invalid"),
    (dict(max_patches=3, patch=8, aspect=(0.25, 1.0)), "max_patches=3 is smaller than the minimum"),
    (dict(max_patches=16, patch=1), "patch=1 is invalid"),
    (dict(max_patches=16, patch=8, aspect=(2.0, 0.5)), "aspect=(2.0, 0.5) is invalid"),
    (dict(max_patches=16, patch=8, size=3), "unknown key(s) ['size']"),
])
def test_bad_data_settings_name_the_value(naflex_cfg, message):
  with pytest.raises(ValueError) as e:
    pipeline.check_data_config(dict(name="shapes", naflex=naflex_cfg))
  assert message in str(e.value)


@pytest.mark.parametrize("image, extra, message", [
    (dict(TOWER, variant="shapes/conv-64"), {}, "needs image.stem='patch'"),
    (dict(TOWER, patch_dropout=0.5), {}, "patch_dropout=0.5 is not supported"),
    (dict(TOWER), dict(decoder=dict(variant="mu", depth=1)), "read the image tokens"),
])
def test_bad_model_settings_name_the_value(image, extra, message):
  cfg = dict(image=dict(image, naflex=True), text=dict(variant="mu", depth=1), contrastive=dict(embed_dim=16), **extra)
  with pytest.raises(ValueError, match=message):
    resolve_config(cfg)
  with pytest.raises(ValueError, match="posemb_grid=0 is invalid"):
    resolve_config(dict(cfg, image=dict(TOWER, naflex=dict(posemb_grid=0))))


def test_bad_inputs_are_clear(fixed):
  _, params, nf = fixed
  packed = host.pack_batch([_pixels(32, 32)], dict(patch=4, max_patches=16))  # another patch size
  with pytest.raises(ValueError, match="data.naflex.patch must equal the tower's patch"):
    _pooled(nf, params, packed)
  with pytest.raises(images.CorruptImageError, match="H, W >= 1"):
    host.pack(np.zeros((0, 5, 3), np.uint8), PATCH, 16)
  with pytest.raises(ValueError, match="aspect=None"):
    host.check_data(dict(name="folder", naflex=dict(max_patches=16, patch=8, aspect=(0.5, 2.0))))
