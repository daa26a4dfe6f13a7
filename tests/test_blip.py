"""BLIP's pieces on the composable model: the fusion head's params (shapes, logical axis names, what
share="blip" shares), the ITM hard-negative draw (never the positive, frequencies that follow the
similarities), the MLM masking (only the selected positions, its 80/10/10 split), and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn, traverse_util

from conftest import tiny_config
from vljax import objectives
from vljax.models import get_model
from vljax.objectives import masked, matching
from vljax.train import setup

IMAGE = dict(variant="mu/8", depth=1, pool="gap", posemb="sincos2d")
TEXT = dict(variant="mu", depth=1, causal=False, pool="last", vocab_size=64, max_len=12)
DECODER = dict(variant="mu", depth=1, vocab_size=64, max_len=12)
FUSION = {"none": dict(share="none", variant="mu", depth=1), "blip": dict(share="blip")}


def _model_cfg(share, **keys):
  return dict(name="composable", image=IMAGE, text=TEXT, contrastive=dict(embed_dim=16), decoder=DECODER,
              fusion=FUSION[share], **keys)


def _params(model):
  inputs = dict(image=jnp.zeros((2, 32, 32, 3)), text=jnp.ones((2, 12), jnp.int32))
  return jax.eval_shape(lambda r: model.init(r, **inputs)["params"], jax.random.PRNGKey(0))


def _flat(tree):
  return traverse_util.flatten_dict(tree, sep="/")


@pytest.mark.parametrize("share", ["none", "blip"])
def test_fusion_params_have_shapes_and_logical_names(share):
  boxed = _params(get_model(_model_cfg(share)))
  names = _flat(nn.get_partition_spec(boxed))
  shapes = {k: v.shape for k, v in _flat(nn.unbox(boxed)).items()}
  assert all(len(spec) == len(shapes[k]) for k, spec in names.items())  # every param named, every axis
  assert shapes["itm_head/kernel"] == (32, 2) and tuple(names["itm_head/kernel"]) == ("embed", None)
  assert shapes["enc_token"] == shapes["mlm_mask_token"] == (32,) and tuple(names["enc_token"]) == ("embed",)
  own = {k for k in shapes if k.startswith(("fusion_embed/", "fusion_encoder/"))}
  enc_attn = {k for k in shapes if "/enc_attn/" in k}
  if share == "none":
    assert shapes["fusion_embed/embedding/embedding"] == (64, 32)
    assert tuple(names["fusion_embed/embedding/embedding"]) == ("vocab", "embed")
    assert tuple(names["fusion_encoder/block_0/cross_attn/query/kernel"]) == ("embed", "heads", "kv")
    assert not enc_attn
  else:  # its own weights are the decoder blocks' bidirectional self-attention, nothing else
    assert not own
    assert enc_attn == {k.replace("/attn/", "/enc_attn/") for k in shapes if k.startswith("dec/") and "/attn/" in k}
    assert tuple(names["dec/decoder/block_0/enc_attn/query/kernel"]) == ("embed", "heads", "kv")


def test_blip_sharing_adds_only_self_attention_and_scan_keeps_it():
  plain = _flat(nn.unbox(_params(get_model(_model_cfg("blip")))))
  decoder_only = _flat(nn.unbox(_params(get_model(dict(_model_cfg("blip"), fusion=None)))))
  extra = set(plain) - set(decoder_only)
  assert extra == {k for k in plain if "/enc_attn/" in k} | {"itm_head/kernel", "itm_head/bias", "enc_token",
                                                            "mlm_mask_token"}
  scanned = _flat(nn.unbox(_params(get_model(_model_cfg("blip", scan=True, remat="full")))))
  assert scanned["dec/decoder/layers/enc_attn/query/kernel"].shape == (1, 32, 2, 16)


@pytest.mark.parametrize("share", ["none", "blip"])
def test_fusion_passes_read_the_image_and_every_real_token(share):
  model = get_model(_model_cfg(share))
  ids = jnp.array([[1, 5, 6, 7, 2, 0, 0, 0]] * 2, jnp.int32)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
  params = model.init(jax.random.PRNGKey(0), image=images, text=ids)["params"]
  memory = model.apply({"params": params}, images, method="encode_image")["img_tokens"]
  itm = model.apply({"params": params}, memory, ids, method="itm_logits")
  assert itm.shape == (2, 2) and itm.dtype == jnp.float32
  assert not np.allclose(itm[0], itm[1])  # two images, two scores
  later_token = ids.at[:, 3].set(9)  # bidirectional: [ENC] sees a later token
  assert not np.allclose(model.apply({"params": params}, memory, later_token, method="itm_logits"), itm)
  padded = model.apply({"params": params}, memory, ids.at[:, 6].set(0), method="itm_logits")
  np.testing.assert_allclose(padded, itm, rtol=1e-6)  # pad keys are masked
  logits = model.apply({"params": params}, memory, ids, ids == 6, method="mlm_logits")
  assert logits.shape == (2, 8, 64) and logits.dtype == jnp.float32
  unmasked = model.apply({"params": params}, memory, ids, jnp.zeros(ids.shape, bool), method="mlm_logits")
  assert not np.allclose(logits[:, 2], unmasked[:, 2])  # the [MASK] row stands where token 6 was


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_hard_negatives_never_the_positive_and_follow_the_similarities():
  """zimg = the identity, so sims[i, j] = scale * ztxt[j, i] is known; 4000 draws of a fixed key."""
  b, draws = 5, 4000
  ztxt = _unit(np.random.default_rng(0).uniform(0.05, 1.0, size=(b, b))).astype(np.float32)
  zimg, scale = np.eye(b, dtype=np.float32), 4.0
  keys = jax.random.split(jax.random.PRNGKey(0), draws)
  neg_text, neg_image = jax.jit(jax.vmap(lambda k: matching.sample_hard_negatives(zimg, ztxt, scale, k)))(keys)
  sims = scale * ztxt.T  # [image, text]
  for got, logits in ((np.asarray(neg_text), sims), (np.asarray(neg_image), sims.T)):
    assert not (got == np.arange(b)[None]).any()
    want = np.where(np.eye(b, dtype=bool), 0.0, np.exp(logits))
    want /= want.sum(axis=1, keepdims=True)
    freq = np.stack([(got == j).mean(axis=0) for j in range(b)], axis=1)  # [row, choice]
    bound = 5 * np.sqrt(want * (1 - want) / draws) + 1e-9
    assert (np.abs(freq - want) <= bound).all(), (freq, want)
    assert np.corrcoef(freq[~np.eye(b, dtype=bool)], want[~np.eye(b, dtype=bool)])[0, 1] > 0.99


def test_identical_captions_are_no_negatives_unless_nothing_else_is_left():
  ids = jnp.array([[1, 5, 2], [1, 5, 2], [1, 6, 2], [1, 7, 2]], jnp.int32)
  same = np.asarray(matching.same_text(ids))
  np.testing.assert_array_equal(same, np.eye(4, dtype=bool) | (np.arange(4)[:, None] + np.arange(4)[None] == 1))
  z = _unit(np.random.default_rng(1).normal(size=(4, 8))).astype(np.float32)
  keys = jax.random.split(jax.random.PRNGKey(0), 500)
  draw = jax.jit(jax.vmap(lambda k, s: matching.sample_hard_negatives(z, z, 1.0, k, s), in_axes=(0, None)))
  neg_text, neg_image = map(np.asarray, draw(keys, jnp.asarray(same)))
  for got in (neg_text, neg_image):  # 0 and 1 share a caption: neither is the other's negative
    assert not (got[:, 0] == 1).any() and not (got[:, 1] == 0).any() and not (got == np.arange(4)).any()
  all_same = np.asarray(draw(keys, jnp.ones((4, 4), bool))[0])  # nothing else left: any non-positive
  assert not (all_same == np.arange(4)).any() and len(np.unique(all_same[:, 0])) == 3


def test_mlm_masks_selected_positions_only_with_the_80_10_10_split():
  rng = np.random.default_rng(0)
  rows, length, vocab, pad = 400, 24, 1000, 0
  lengths = rng.integers(3, length + 1, rows)
  ids = np.where(np.arange(length)[None] < lengths[:, None], rng.integers(3, vocab, (rows, length)), pad)
  ids[:, 0], ids[np.arange(rows), lengths - 1] = 1, 2  # BOS ... EOS
  ids = jnp.asarray(ids, jnp.int32)
  inputs, to_mask, selected = map(np.asarray, masked.mask_tokens(ids, jax.random.PRNGKey(3), pad_id=pad,
                                                                 vocab_size=vocab))
  ids = np.asarray(ids)
  candidates = np.asarray(masked.maskable(jnp.asarray(ids), pad))
  assert not (selected & ~candidates).any() and not (to_mask & ~selected).any()
  assert not candidates[:, 0].any() and not candidates[np.arange(rows), lengths - 1].any()  # [ENC]'s place, EOS
  np.testing.assert_array_equal(inputs[~selected], ids[~selected])
  np.testing.assert_array_equal(selected.sum(1), np.asarray(masked.masks_per_row(jnp.asarray(ids), pad)))
  n = selected.sum()
  assert n == masked.masked_token_count({"text": ids}, pad)
  assert abs(n / candidates.sum() - masked.MASK_RATE) < 0.03  # rounding per caption, about 15%
  replaced = selected & ~to_mask & (inputs != ids)
  kept = selected & ~to_mask & (inputs == ids)
  for count, p in ((to_mask.sum(), 0.8), (replaced.sum(), 0.1), (kept.sum(), 0.1)):
    assert abs(count - p * n) <= 4 * np.sqrt(n * p * (1 - p)) + 2, (count, p, n)
  assert (inputs != pad)[ids != pad].all()  # a random token is never padding


BAD = [
    (dict(fusion=dict(share="half")), r"Unknown fusion.share 'half'; valid: \['blip', 'none'\]"),
    (dict(fusion=dict(share="none")), r"share='none' needs variant"),
    (dict(fusion=dict(share="blip", depth=2)), r"share='blip' is the decoder's architecture; it takes no \['depth'\]"),
    (dict(decoder=None, fusion=dict(share="blip")), r"share='blip' shares the decoder's weights: it needs model.decoder"),
    (dict(decoder=dict(DECODER, input="embed"), fusion=dict(share="none", variant="mu", pool="cls")),
     r"fusion: unknown key\(s\) \['pool'\]"),
]


@pytest.mark.parametrize("keys, message", BAD)
def test_bad_fusion_configs_name_the_value(keys, message):
  with pytest.raises(ValueError, match=message):
    get_model(dict(_model_cfg("none"), **keys))


@pytest.mark.parametrize("objective", ["itm", "mlm"])
def test_objectives_without_a_fusion_head_are_refused(objective):
  cfg = tiny_config(evals={})
  cfg.objectives = {"softmax_contrastive": 1.0, objective: 1.0}
  with pytest.raises(ValueError, match=rf"objectives.{objective} needs model output\(s\) \['fusion_memory'\].*"
                                       r"set model.fusion=dict\(share='none', variant=...\) or dict\(share='blip'\)"):
    setup.build(cfg)
  model = get_model(dict(name="composable", image=IMAGE, text=TEXT, contrastive=dict(embed_dim=16)))
  access = objectives.ModelAccess(model, {}, jax.random.PRNGKey(0))
  outputs = dict(img_emb=jnp.ones((2, 16)), txt_emb=jnp.ones((2, 16)), logit_scale=1.0, fusion_memory=None)
  with pytest.raises(ValueError, match=rf"objective '{objective}' runs the image-grounded text encoder.*"
                                       r"valid: a composable model with model.fusion"):
    objectives.call_objective(objective, outputs, {"text": jnp.ones((2, 4), jnp.int32)}, {}, pad_id=0,
                              model=access)
