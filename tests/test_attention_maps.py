"""Attention maps (vljax/inference/attention_maps.py): MultiHeadAttention's recording leaves the outputs
bit-identical and equals a hand-computed softmax; attention rollout; caption-token and pooled maps of
tiny random models, with weights set so that the attention points at one known patch; overlay and
sheet; Predictor.attention_maps on a random CoCa run; bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from PIL import Image

import vljax
from conftest import tiny_config
from random_workdirs import random_params, write_random_workdir
from vljax.data import shapes, tokenizers
from vljax.inference import attention_maps as am
from vljax.models import get_model, layers
from vljax.models.resolve import resolve_model_config

MU = dict(variant="mu/8", depth=1)
# A BLIP-like layout: the image tokens keep [CLS] first, a decoder reads them, a probe pools them.
POINTING = dict(name="composable", image=dict(MU, pool="tok", cls_in_tokens=True, posemb="learned"),
                text=dict(variant="mu", depth=1), contrastive=dict(embed_dim=16, image_pool="map"),
                decoder=dict(variant="mu", depth=1))
GRID = (2, 4)  # 16 x 32 images, patch 8: a grid that is not square catches a transposed layout
TARGETS = ((1, 2), (0, 3))  # the bright patch of each test image, (row, column)


def _model(model_cfg):
  cfg = tiny_config(evals={})
  cfg.model = model_cfg
  return get_model(resolve_model_config(cfg, tokenizers.get_tokenizer(cfg.data.tokenizer)))


def _random_params(model, image_shape=(1, 16, 32, 3), seed=0):
  shapes_ = jax.eval_shape(model.init, jax.random.PRNGKey(0), image=jnp.zeros(image_shape),
                           text=jnp.zeros((1, 12), jnp.int32))
  return random_params(nn.unbox(shapes_["params"]), np.random.default_rng(seed))


def _bright_patch_images():
  """[2, 16, 32, 3] zeros but for one patch of ones per image, at TARGETS."""
  images = np.zeros((len(TARGETS), 16, 32, 3), np.float32)
  for b, (row, col) in enumerate(TARGETS):
    images[b, 8 * row:8 * row + 8, 8 * col:8 * col + 8] = 1.0
  return images


def _point_at_feature_0(attn: dict) -> None:
  """A cross-attention whose query ignores its input and whose key reads feature 0 of the memory: the
  token with the largest feature 0 takes the attention."""
  attn["query"]["kernel"][:] = 0.0
  attn["query"]["bias"][:] = 1.0
  attn["key"]["kernel"][:] = 0.0
  attn["key"]["kernel"][0] = 1.0


def _pointing_params(model):
  """The image tower passes each patch's embedding through unchanged (zero branches and position
  embeddings): its output token is LayerNorm(100 * mean pixel * e_0), so the bright patch alone has
  feature 0 (about 5.6), [CLS] and the dark patches are 0. The decoder's cross-attention and the
  probe read feature 0."""
  params = _random_params(model)
  img = params["img"]
  img["embedding"]["kernel"][:] = 0.0
  img["embedding"]["kernel"][..., 0] = 100.0 / (8 * 8 * 3)
  img["posemb"]["pos_embedding"][:] = 0.0
  img["cls"][:] = 0.0
  block = img["encoder"]["block_0"]
  for part in (block["attn"]["out"], block["mlp"]["fc2"]):
    part["kernel"][:] = 0.0
    part["bias"][:] = 0.0
  _point_at_feature_0(params["dec"]["decoder"]["block_0"]["cross_attn"])
  _point_at_feature_0(params["img_pool"]["attn"])
  return params


@pytest.fixture(scope="module")
def pointing():
  model = _model(POINTING)
  return model, _pointing_params(model)


# Not `cross_path`: the bit-identity compares one program's outputs with and without extra outputs.
def test_recording_leaves_the_outputs_bit_identical(pointing):
  model, params = pointing
  images, ids = _bright_patch_images(), jnp.ones((2, 12), jnp.int32)
  normal = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t))(params, images, ids)
  recorded, state = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t, mutable=[layers.ATTENTION_MAPS]))(
      params, images, ids)
  assert set(normal) == set(recorded)
  for key in normal:
    np.testing.assert_array_equal(np.asarray(recorded[key]), np.asarray(normal[key]), err_msg=key)
  probs = state[layers.ATTENTION_MAPS]
  assert set(probs) >= {"img", "dec", "img_pool", "txt"}
  cross = probs["dec"]["decoder"]["block_0"]["cross_attn"]["probs"][0]
  assert cross.shape == (2, 2, 12, 1 + 8) and cross.dtype == jnp.float32  # [B, heads, T, [CLS] + patches]
  np.testing.assert_allclose(np.sum(cross, axis=-1), 1.0, rtol=1e-5)
  # init makes every collection mutable: it must record nothing
  assert set(jax.eval_shape(model.init, jax.random.PRNGKey(0), image=images, text=ids)) == {"params"}


@pytest.mark.parametrize("causal", [False, True])
def test_recorded_probabilities_equal_a_hand_softmax(causal):
  rng = np.random.default_rng(1)
  attn = layers.MultiHeadAttention(num_heads=2)
  x = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32)
  keep = np.ones((2, 5), bool)
  keep[1, 3:] = False  # the second row's last two tokens are padding
  mask = jnp.asarray(keep)[:, None, None, :]
  variables = {"params": random_params(nn.unbox(jax.eval_shape(attn.init, jax.random.PRNGKey(0), x)["params"]),
                                       np.random.default_rng(0))}
  run = jax.jit(lambda v, x, m, record: attn.apply(v, x, mask=m, is_causal=causal,
                                                   mutable=[layers.ATTENTION_MAPS] if record else False),
                static_argnums=3)
  out, state = run(variables, x, mask, True)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(run(variables, x, mask, False)))
  probs = np.asarray(state[layers.ATTENTION_MAPS]["probs"][0])

  p = variables["params"]
  q = np.einsum("bld,dhk->bhlk", x, p["query"]["kernel"]) + p["query"]["bias"][None, :, None]
  k = np.einsum("bld,dhk->bhlk", x, p["key"]["kernel"])  # the key has no bias
  logits = np.einsum("bhtk,bhsk->bhts", q, k) / np.sqrt(4.0)
  visible = keep[:, None, None, :] & (np.tril(np.ones((5, 5), bool)) if causal else True)
  logits = np.where(visible, logits, -np.inf)
  expected = np.exp(logits - logits.max(-1, keepdims=True))
  expected /= expected.sum(-1, keepdims=True)
  np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
  assert np.all(probs[1, :, :, 3:] == 0.0)  # padding gets no attention


def test_a_scanned_transformer_records_every_layer():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 4, 8)), jnp.float32)
  scanned = layers.Transformer(3, 16, 2, scan=True)
  params = random_params(nn.unbox(jax.eval_shape(scanned.init, jax.random.PRNGKey(0), x)["params"]),
                         np.random.default_rng(0))
  looped = layers.Transformer(3, 16, 2)
  record = lambda m: jax.jit(lambda p, x: m.apply({"params": p}, x, mutable=[layers.ATTENTION_MAPS])[1])
  recordings = [record(m)(p, x)[layers.ATTENTION_MAPS]
                for m, p in ((scanned, params), (looped, layers.unstack_layers(params, 3)))]
  stacked = [np.asarray(am.layer_probs(r, "attn")) for r in recordings]
  assert stacked[0].shape == (3, 2, 2, 4, 4)
  np.testing.assert_allclose(stacked[0], stacked[1], rtol=1e-6)


def test_rollout_of_identity_and_random_attention():
  rollout = jax.jit(am.attention_rollout)
  eye = jnp.broadcast_to(jnp.eye(5), (3, 2, 4, 5, 5))  # [layers, B, heads, T, T]
  np.testing.assert_allclose(rollout(eye), np.broadcast_to(np.eye(5), (2, 5, 5)), atol=1e-7)
  rng = np.random.default_rng(3)
  probs = rng.random((2, 1, 3, 4, 4))
  probs /= probs.sum(-1, keepdims=True)
  a1, a2 = ((p.mean(1)[0] + np.eye(4)) / 2 for p in probs)  # each row sums to 2 before renormalising
  np.testing.assert_allclose(rollout(jnp.asarray(probs, jnp.float32))[0], a2 @ a1, rtol=1e-5)


@pytest.mark.parametrize("pool", ["gap", "tok"])
def test_uniform_self_attention_rolls_out_to_a_uniform_pooled_map(pool):
  """With zero queries every ViT attention is uniform, which leaves the uniform row unchanged: the
  pooled map (the mean row for gap; for tok the [CLS] row, uniform but for [CLS]'s own share, which is
  dropped) is uniform over the patches."""
  model = _model(tiny_config().model.to_dict() | dict(image=dict(MU, depth=2, pool=pool, posemb="sincos2d")))
  params = _random_params(model, (1, 16, 32, 3))
  for i in range(2):
    query = params["img"]["encoder"][f"block_{i}"]["attn"]["query"]
    query["kernel"][:] = 0.0
    query["bias"][:] = 0.0
  assert am.pooled_method(model) == "rollout"
  maps = np.asarray(jax.jit(lambda p, x: am.pooled_map(model, p, x))(params, _bright_patch_images()))
  assert maps.shape == (2, *GRID)
  np.testing.assert_allclose(maps, 1.0 / 8, rtol=1e-5)


def test_caption_maps_point_at_the_patch_the_cross_attention_reads(pointing):
  model, params = pointing
  ids = np.ones((2, 6), np.int32)
  maps = np.asarray(jax.jit(lambda p, x, t: am.caption_maps(model, p, x, t))(params, _bright_patch_images(), ids))
  assert maps.shape == (2, 1, 6, *GRID)  # [B, decoder layers, positions, h, w]
  np.testing.assert_allclose(maps.sum(axis=(-2, -1)), 1.0, rtol=1e-5)
  for b, target in enumerate(TARGETS):
    flat = maps[b, 0].reshape(6, -1)
    assert np.all(np.argmax(flat, axis=1) == np.ravel_multi_index(target, GRID))
    assert np.all(flat.max(axis=1) > 0.99)


def test_the_probe_map_points_at_the_patch_it_reads(pointing):
  model, params = pointing
  assert am.pooled_method(model) == "probe"
  maps = np.asarray(jax.jit(lambda p, x: am.pooled_map(model, p, x))(params, _bright_patch_images()))
  assert maps.shape == (2, *GRID)
  for b, target in enumerate(TARGETS):
    assert np.unravel_index(np.argmax(maps[b]), GRID) == target and maps[b][target] > 0.99


def test_overlay_and_sheet(tmp_path):
  image = np.full((32, 48, 3), 100, np.uint8)
  grid = np.zeros((2, 3), np.float32)
  grid[1, 2] = 1.0
  out = am.overlay(image, grid, alpha=0.5)
  assert out.shape == (32, 48, 3) and out.dtype == np.uint8
  assert not np.array_equal(out[-1, -1], out[0, 0])  # the hot corner and the cold one differ in colour
  np.testing.assert_array_equal(am.overlay(image, grid, alpha=0.0), image)
  path = str(tmp_path / "sheet.png")
  sheet = am.overlay_sheet([(out, "a"), (image, "b"), (out, "c")], path, columns=2, cell=40)
  assert sheet.dtype == np.uint8 and sheet.shape == (2 * (40 + am.TITLE + am.MARGIN) + am.MARGIN,
                                                     2 * (40 + am.MARGIN) + am.MARGIN, 3)
  np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), sheet)


@pytest.fixture(scope="module")
def coca(tmp_path_factory):
  cfg = tiny_config(evals={})
  cfg.model = dict(name="coca", embed_dim=16, image=dict(variant="mu/8", posemb="sincos2d"),
                   text=dict(variant="mu", depth=1), num_queries=4)
  cfg.objectives = {"softmax_contrastive": 1.0, "captioning": 2.0}
  return vljax.load(write_random_workdir(str(tmp_path_factory.mktemp("coca")), cfg, seed=1))


def _shapes_images(n):
  world = shapes.ShapesWorld(seed=0, image_size=32)
  return np.stack([world.example(i, split="eval")["image"] for i in range(n)])


def test_predictor_caption_token_maps(coca):
  images = _shapes_images(2)
  given = coca.attention_maps(images, captions=["a red circle", "a blue star left of"], layer=0)
  assert given["kind"] == "caption" and given["method"] == "cross_attention"
  assert given["tokens"] == [["a", "red", "circle"], ["a", "blue", "star", "left", "of"]]
  assert [m.shape for m in given["maps"]] == [(3, 4, 4), (5, 4, 4)]  # 32 px / patch 8 (through 4 memory queries)
  for m in given["maps"]:
    np.testing.assert_allclose(m.sum(axis=(1, 2)), 1.0, rtol=1e-5)
  assert given["images"].dtype == np.uint8 and given["images"].shape == (2, 32, 32, 3)
  own = coca.attention_maps(images)  # the model's greedy captions
  assert own["captions"] == coca.caption(images)
  assert [len(t) for t in own["tokens"]] == [len(m) for m in own["maps"]]
  drawn = am.overlay(own["images"][0], own["maps"][0][0])
  assert drawn.shape == (32, 32, 3) and drawn.dtype == np.uint8


def test_predictor_pooled_maps_read_the_cascaded_probe(coca):
  out = coca.attention_maps(_shapes_images(3), kind="pooled")
  assert out["method"] == "probe" and out["maps"].shape == (3, 4, 4)
  np.testing.assert_allclose(out["maps"].sum(axis=(1, 2)), 1.0, rtol=1e-5)


def test_predictor_bad_calls_name_the_value(coca):
  images = _shapes_images(2)
  for kwargs, message in [(dict(kind="heat"), "Unknown attention map kind 'heat'"),
                          (dict(layer=1), "layer=1 is invalid; valid: 'mean' or a decoder layer index in -1..0"),
                          (dict(layer="last"), "layer='last' is invalid"),
                          (dict(captions=["one caption"]), "1 captions for 2 images"),
                          (dict(captions=[1, 2]), "captions must be a non-empty list of strings"),
                          (dict(kind="pooled", captions=["a", "b"]), "kind='pooled' maps the image embedding")]:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
      coca.attention_maps(images, **kwargs)


def test_models_without_the_attention_get_a_clear_error():
  clip = _model(tiny_config().model.to_dict())
  cap = _model(dict(name="composable", image=MU, decoder=dict(variant="mu", depth=1)))
  max_pool = _model(tiny_config().model.to_dict() | dict(image=dict(MU, pool="max")))
  llava = _model(dict(name="llava", image=MU, text=dict(variant="mu", max_len=96), projector="linear"))
  assert am.resolve_kind(clip, "auto") == "pooled" and am.resolve_kind(cap, "auto") == "caption"
  for model, kind, message in [(clip, "caption", "has none \\(model.decoder\\): use kind='pooled'"),
                               (cap, "pooled", "has none \\(model.contrastive\\): use kind='caption'"),
                               (max_pool, "pooled", "no attention map for image.pool='max'"),
                               (llava, "auto", "LLaVA splices the image tokens")]:
    with pytest.raises(ValueError, match=message):
      am.resolve_kind(model, kind)
  with pytest.raises(ValueError, match="does not fit 1 non-patch token\\(s\\) \\+ a 2x4 patch grid"):
    am.to_grid(jnp.ones((1, 8)), GRID, prefix=1)
  with pytest.raises(ValueError, match="expected|uint8 \\[H, W, 3\\]"):
    am.overlay(np.zeros((8, 8, 3), np.float32), np.zeros((2, 2)))
  with pytest.raises(ValueError, match="Unknown colormap 'nope'"):
    am.overlay(np.zeros((8, 8, 3), np.uint8), np.zeros((2, 2)), colormap="nope")
