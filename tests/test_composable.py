"""The composable model: every combination of heads is a config that trains, the image tower's
params are the same under every combination, captions decode with the KV cache, and bad configs
are errors naming the key."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn, traverse_util

from conftest import tiny_config, train_on_one_device
from vljax.data import pipeline, tokenizers
from vljax.inference import ModelRunner
from vljax.models import get_model
from vljax.models.capabilities import EMBEDDINGS, GENERATION, IMAGE_FEATURES, LIKELIHOOD, of as capabilities_of
from vljax.parallel.mesh import make_mesh
from vljax.train import setup

IMAGE = dict(variant="mu/8", pool="gap", posemb="sincos2d")
TEXT = dict(variant="mu", causal=False, pool="last")
DECODER = dict(variant="mu")
SOFTMAX = dict(embed_dim=16, logit_scale_init=10.0)
SIGMOID = dict(embed_dim=16, logit_scale_init=10.0, logit_bias_init=-10.0)
# name -> (model keys besides image, objectives)
COMBINATIONS = {
    "clip": (dict(text=TEXT, contrastive=SOFTMAX), {"softmax_contrastive": 1.0}),
    "siglip": (dict(text=TEXT, contrastive=SIGMOID), {"sigmoid_contrastive": 1.0}),
    "cap": (dict(decoder=DECODER), {"captioning": 1.0}),
    "cappa": (dict(decoder=dict(DECODER, mode="parallel")), {"captioning": 1.0}),
    "cappa_plus_sigmoid": (dict(text=TEXT, contrastive=SIGMOID, decoder=dict(DECODER, mode="parallel")),
                           {"sigmoid_contrastive": 1.0, "captioning": 1.0}),
    "two_tower_plus_captioning": (dict(text=TEXT, contrastive=SOFTMAX, decoder=DECODER),
                                  {"softmax_contrastive": 1.0, "captioning": 2.0}),
    "coca_like": (dict(text=TEXT, contrastive=dict(SIGMOID, image_pool="map"), decoder=dict(DECODER, memory_queries=4)),
                  {"sigmoid_contrastive": 1.0, "captioning": 2.0}),
}


def _config(name):
  keys, objectives = COMBINATIONS[name]
  cfg = tiny_config(evals={})
  cfg.objectives = objectives  # assigned: update() would merge them into the default objective
  cfg.model = dict(name="composable", image=IMAGE, **keys)
  cfg.schedule.name = "constant"
  return cfg


def _image_tower_tree(params):
  return {k: v.shape for k, v in traverse_util.flatten_dict(params["img"], sep="/").items()}


def test_every_combination_keeps_one_image_tower():
  """The `img` subtree has the same paths and shapes under every combination of heads."""
  towers = {}
  for name in sorted(COMBINATIONS):
    model = get_model(_model_cfg(name))
    inputs = dict(image=jnp.zeros((2, 32, 32, 3)), text=jnp.ones((2, 12), jnp.int32))
    towers[name] = _image_tower_tree(nn.unbox(jax.eval_shape(lambda r, m=model: m.init(r, **inputs)["params"],
                                                             jax.random.PRNGKey(0))))
  first = towers.pop("clip")
  assert all(tree == first for tree in towers.values())
  assert not any(k.startswith("head") for k in first)  # projections live outside the tower


# CLIP and SigLIP train as the two-tower model does (tests/test_trainer.py); these are the new ones.
@pytest.mark.slow
@pytest.mark.parametrize("name", ["cap", "cappa", "cappa_plus_sigmoid", "two_tower_plus_captioning", "coca_like"])
def test_each_new_combination_trains(name):
  """Three steps on one batch lower its loss; every objective logs its loss."""
  cfg = _config(name)
  parts = setup.build(cfg)
  batch = next(iter(pipeline.make_train_dataset(cfg.data, parts.tokenizer, global_batch_size=cfg.batch_size, seed=0)))
  history = train_on_one_device(cfg, parts, batch, steps=3)
  losses = [float(m["loss"]) for m in history]
  metrics = history[-1]
  assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
  assert {f"{o}_loss" for o in cfg.objectives} <= set(metrics)


def test_capabilities_and_outputs_follow_the_heads():
  clip = get_model(_model_cfg("clip"))
  cap = get_model(_model_cfg("cap"))
  both = get_model(_model_cfg("coca_like"))
  # every configuration has an image tower: its pooled features serve the few-shot probe
  assert capabilities_of(clip) == {EMBEDDINGS, IMAGE_FEATURES}
  assert capabilities_of(cap) == {GENERATION, LIKELIHOOD, IMAGE_FEATURES}
  assert capabilities_of(both) == {EMBEDDINGS, GENERATION, LIKELIHOOD, IMAGE_FEATURES}
  assert "caption_logits" not in clip.training_outputs() and "logit_bias" not in clip.training_outputs()
  assert {"caption_logits", "img_emb", "logit_bias"} <= both.training_outputs()


def _model_cfg(name, vocab=64, max_len=12):
  keys, _ = COMBINATIONS[name]
  out = dict(name="composable", image=IMAGE)
  for key, value in keys.items():
    out[key] = dict(value, vocab_size=vocab, max_len=max_len) if key in ("text", "decoder") else value
  return out


def test_kv_cached_captions_equal_greedy_recompute():
  from conftest import greedy_by_recompute
  from vljax import decode as decode_lib

  tok = tokenizers.get_tokenizer("shapes")
  model = get_model(_model_cfg("two_tower_plus_captioning", vocab=128, max_len=12))
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
  params = model.init(jax.random.PRNGKey(0), image=images, text=jnp.ones((2, 12), jnp.int32))["params"]
  mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    runner = ModelRunner(model, mesh, chunk=2, tokenizer=tok)
    got, _ = runner.caption(params, np.asarray(images), decode_lib.DecodeOptions(max_len=5, min_len=5))
  ids = np.full((2, 1), tok.bos_id, np.int32)
  assert got == greedy_by_recompute(model, params, images, ids, [1, 1], 5, tok)


BAD = [
    (dict(), r"composable model needs a head"),
    (dict(contrastive=SOFTMAX), r"model.contrastive needs a text tower"),
    (dict(text=TEXT, decoder=DECODER), r"model.text is the contrastive text tower"),
    (dict(text=TEXT, contrastive=dict(SOFTMAX, temperature=1.0)), r"model.contrastive: unknown key\(s\) \['temperature'\]"),
    (dict(decoder=dict(DECODER, mode="diffusion")), r"decoder.mode.*'autoregressive', 'parallel'"),
    (dict(decoder=dict(mode="parallel")), r"model.decoder needs variant"),
    (dict(text=TEXT, contrastive=dict(SOFTMAX, image_pool="cls")), r"contrastive.image_pool 'cls'; valid: \['map', 'tower'\]"),
]


@pytest.mark.parametrize("keys, message", BAD)
def test_bad_configs_name_the_key(keys, message):
  with pytest.raises(ValueError, match=message):
    get_model(dict(name="composable", image=IMAGE, **keys))
