"""Every legacy model class (two_tower, coca, cappa; kept in tests/legacy_models.py) is a
configuration of the composable model: its params, translated by vljax/models/legacy.py, give the
composable model the same outputs as the legacy class (embeddings, logit scale and bias, caption
logits, KV-cached decode steps), the same training loss and gradients, and the same FLOP count."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn, traverse_util

from vljax.models import flops, get_model, legacy
from vljax.models.decoder import init_cache, make_step_fn
from vljax.objectives import captioning_loss, softmax_contrastive_loss

import legacy_models

VOCAB, LENGTH, BATCH = 64, 8, 3
TEXT = dict(variant="mu", vocab_size=VOCAB, max_len=LENGTH)
# name -> legacy model config (tiny towers, 32 px images)
LEGACY = {
    "clip": dict(name="two_tower", embed_dim=16, logit_scale_init=1 / 0.07,
                 image=dict(variant="mu/8", pool="tok", cls_posemb=True, pre_norm=True, head_bias=False,
                            activation="quick_gelu", norm_eps=1e-5),
                 text=dict(TEXT, causal=True, pool="last", head_bias=False)),
    # SigLIP: a MAP-pooled image tower whose width is the embedding; the text head keeps its bias.
    "siglip": dict(name="two_tower", embed_dim=32, logit_scale_init=10.0, logit_bias_init=-10.0,
                   image=dict(variant="mu/8", pool="map", head=False), text=dict(TEXT, pool="last")),
    "lit": dict(name="two_tower", embed_dim=32, image=dict(variant="mu/8", pool="gap", posemb="sincos2d"),
                text=dict(TEXT, head=False)),
    "coca_softmax_cascade": dict(name="coca", embed_dim=16, image=dict(variant="mu/8"), text=TEXT,
                                 multimodal_depth=1, num_queries=4, pooler="cascade"),
    "coca_sigmoid_parallel": dict(name="coca", embed_dim=16, image=dict(variant="mu/8", pool="tok"), text=TEXT,
                                  num_queries=4, pooler="parallel", logit_scale_init=10.0, logit_bias_init=-10.0),
    "cappa": dict(name="cappa", image=dict(variant="mu/8"), text=TEXT, parallel_fraction=0.5),
}
GENERATIVE = ("coca_softmax_cascade", "coca_sigmoid_parallel", "cappa")

# The tests comparing two code paths' floats are marked `cross_path`: CI reruns them under another
# instruction set (tests/numerics.py). Trees, FLOP counts and config errors do not depend on it.


def _inputs():
  rng = np.random.default_rng(0)
  image = jnp.asarray(rng.normal(size=(BATCH, 32, 32, 3)), jnp.float32)
  ids = rng.integers(1, VOCAB, size=(BATCH, LENGTH))
  ids[1, 5:], ids[2, 2:] = 0, 0  # right-padded with pad_id 0: CoCa's [CLS] row must skip these keys
  return image, jnp.asarray(ids, jnp.int32)


def _decode_logits(model, params, memory, ids):
  """Logits of every position of ids, fed one step at a time through the KV caches."""
  step = make_step_fn(model, params)

  def body(cache, i):
    logits, cache = step(jax.lax.dynamic_index_in_dim(ids, i, axis=1, keepdims=False), cache, i)
    return cache, logits

  _, logits = jax.lax.scan(body, init_cache(model, params, memory, ids.shape[1]), jnp.arange(ids.shape[1]))
  return jnp.swapaxes(logits, 0, 1)


def _decoding(model, params, image, ids, out=None):
  """The eval pass's outputs, teacher-forced caption logits and the KV-cached decode steps."""
  out = dict(model.apply({"params": params}, image, ids)) if out is None else out
  out["teacher_forced"] = model.apply({"params": params}, out["memory"], ids, method="caption_logits")
  out["decoded"] = _decode_logits(model, params, out["memory"], ids)
  return out


def _run(model, generative, params, image, ids):
  """Everything compared, in one program per model: the eval pass's outputs; for the generative
  models also the training pass (parallel prediction, "mask" stream) and _decoding's."""
  out = dict(model.apply({"params": params}, image, ids))
  if generative:
    train = model.apply({"params": params}, image, ids, train=True, rngs={"mask": jax.random.PRNGKey(1)})
    out["train_caption_logits"] = train["caption_logits"]
    out = _decoding(model, params, image, ids, out)
  return out


@functools.cache
def _models(name):
  """(legacy model, its params, composable model, translated params)."""
  cfg = LEGACY[name]
  old, new = legacy_models.build(cfg), get_model(legacy.TRANSLATIONS[cfg["name"]][0](cfg))
  image, ids = _inputs()
  params = jax.jit(old.init)(jax.random.PRNGKey(0), image, ids)["params"]
  return old, params, new, legacy.TRANSLATIONS[cfg["name"]][1](params)


def _programs(name, make) -> tuple[str, str]:
  """StableHLO text of make(model, to_params) for the legacy model and for its composable
  configuration: a function of the translated params (to_params: to the model's own tree) returning
  a dict, of which the outputs the legacy model gives are kept."""
  old, _, new, translated = _models(name)
  to_legacy = functools.partial(legacy.to_legacy_params, LEGACY[name]["name"])
  translated = nn.unbox(translated)
  old_keys = set(jax.eval_shape(make(old, to_legacy), translated))
  new_keys = set(jax.eval_shape(make(new, lambda p: p), translated))
  assert old_keys <= new_keys, sorted(old_keys - new_keys)
  lower = lambda model, to_params: jax.jit(lambda p: {k: v for k, v in make(model, to_params)(p).items()
                                                      if k in old_keys}).lower(translated).as_text()
  return lower(old, to_legacy), lower(new, lambda p: p)


def _shapes(tree):
  return {k: v.shape for k, v in traverse_util.flatten_dict(nn.unbox(tree), sep="/").items()}


@pytest.mark.parametrize("name", sorted(LEGACY))
def test_translated_params_are_the_composable_tree(name):
  """The translation covers every param, and the composable config builds exactly that tree."""
  _, params, model, translated = _models(name)
  image, ids = _inputs()
  expected = jax.eval_shape(lambda r: model.init(r, image, ids)["params"], jax.random.PRNGKey(0))
  assert _shapes(translated) == _shapes(expected)
  assert sum(np.prod(s) for s in _shapes(params).values()) == sum(np.prod(s) for s in _shapes(translated).values())


@pytest.mark.parametrize("name", sorted(LEGACY))
def test_legacy_models_lower_to_one_program(name):
  """Renamed params, the same ops in the same order: every output the legacy model gives (for the
  generative models also the training pass, teacher-forced caption logits and KV-cached decode
  steps) comes from one program, so the two are equal bit for bit wherever they run (any instruction
  set, any XLA options). The programs are compared; neither is compiled."""
  image, ids = _inputs()
  run = lambda model, to_params: lambda p: _run(model, name in GENERATIVE, to_params(p), image, ids)
  old, new = _programs(name, run)
  assert old == new


@pytest.mark.slow
@pytest.mark.cross_path
@pytest.mark.parametrize("name", GENERATIVE)
def test_decode_steps_follow_teacher_forcing(name):
  """The composable KV-cached steps (for CoCa: the text tower's cache, then the decoder's) give the
  teacher-forced logits, up to float32 rounding (cached attention sums over max_len slots)."""
  _, _, model, translated = _models(name)
  new = jax.jit(functools.partial(_decoding, model))(nn.unbox(translated), *_inputs())
  np.testing.assert_allclose(new["decoded"], new["teacher_forced"], rtol=1e-5, atol=1e-5)
  # The training pass's logits (one text pass with [CLS] for CoCa) agree with the no-[CLS] pass.
  if name != "cappa":
    np.testing.assert_allclose(new["caption_logits"], new["teacher_forced"], rtol=1e-5, atol=1e-5)


def _coca_loss(model, params, image, ids):
  out = model.apply({"params": params}, image, ids, train=True)
  return (softmax_contrastive_loss(out["img_emb"], out["txt_emb"], out["logit_scale"])
          + 2.0 * captioning_loss(out["caption_logits"], ids)[0])


def test_coca_training_loss_and_grads_are_one_program():
  """CoCa's objective (softmax contrastive + 2 x captioning), differentiated with respect to the
  translated params: the legacy model's loss and gradients are the composable model's program, so
  they are equal bit for bit."""
  image, ids = _inputs()
  loss_and_grads = lambda model, to_params: lambda p: dict(zip(
      ("loss", "grads"), jax.value_and_grad(lambda q: _coca_loss(model, to_params(q), image, ids))(p)))
  old, new = _programs("coca_softmax_cascade", loss_and_grads)
  assert old == new


def _param_sizes(model, image, ids):
  params = jax.eval_shape(lambda r: model.init(r, image, ids)["params"], jax.random.PRNGKey(0))
  return {k: int(np.prod(v)) for k, v in _shapes(params).items()}


@pytest.mark.parametrize("name", sorted(LEGACY))
def test_flop_counts_are_equal(name):
  """The composable model counts the legacy model's FLOPs, forward and train step (nothing frozen,
  and the legacy image tower frozen as LiT: in composable its head, when it has one, is img_proj)."""
  cfg = LEGACY[name]
  to_config, to_params = legacy.TRANSLATIONS[cfg["name"]]
  inputs = flops.Inputs(image_size=32, images=1, text_len=LENGTH)
  old_cfg = {k: v for k, v in cfg.items() if k != "name"}
  old_parts = legacy_models.CLASSES[cfg["name"]].flop_parts(old_cfg, inputs)
  new_parts = flops.model_parts(to_config(cfg), inputs)
  assert flops.forward_flops(new_parts) == flops.forward_flops(old_parts)
  image, ids = _inputs()
  old_sizes, sizes = _param_sizes(legacy_models.build(cfg), image, ids), _param_sizes(get_model(to_config(cfg)), image, ids)
  # Each composable path -> the legacy path it comes from (a leaf holds its legacy path).
  origin = traverse_util.flatten_dict(to_params(traverse_util.unflatten_dict({p: p for p in old_sizes}, sep="/")),
                                      sep="/")
  assert {p: old_sizes[q] for p, q in origin.items()} == sizes
  for frozen in (lambda p: False, lambda p: p.startswith("img/")):
    new_count = flops.train_flops(new_parts, sizes, lambda p: frozen(origin[p]))
    assert new_count == flops.train_flops(old_parts, old_sizes, frozen)


@pytest.mark.parametrize("recipe", ["coca_shapes", "siglip_shapes"])
def test_new_forms_flops_match_xla(recipe):
  """The forms composable gained (CoCa's [CLS] text tower, shared embedding and cascade pooler; no
  image projection; bias-free projections), at tests/test_flops.py's widths: analytic within
  [0.9, 1.0] of XLA's count of the lowered train step."""
  from test_flops import tiny_recipe, xla_step_flops

  cfg = tiny_recipe(recipe)
  if recipe == "siglip_shapes":  # the image width is the embedding; CLIP's bias-free text projection
    cfg.model.image.pool = "map"
    cfg.model.contrastive.update(image_proj=False, text_proj_bias=False)
  analytic, xla, matmuls = xla_step_flops(cfg)
  assert 0.9 * xla <= analytic <= xla, analytic / xla
  assert analytic == pytest.approx(matmuls, rel=0.01), analytic / matmuls


IMAGE = dict(variant="mu/8")
BAD = [
    (dict(text=TEXT, contrastive=dict(embed_dim=16, image_proj=False)),
     r"contrastive.image_proj=False makes the image width 32 the embedding, but contrastive.embed_dim is 16"),
    (dict(text=TEXT, contrastive=dict(embed_dim=16, text_proj=False)),
     r"contrastive.text_proj=False makes the text width 32 .*embed_dim is 16"),
    (dict(text=TEXT, contrastive=dict(embed_dim=32, image_proj=False, image_proj_bias=False)),
     r"image_proj_bias is the bias of a projection that image_proj=False drops"),
    (dict(text=TEXT, contrastive=dict(text_proj_bias="no")), r"contrastive.text_proj_bias='no' must be True or False"),
    (dict(image=dict(IMAGE, head_bias=False), text=TEXT, contrastive=dict(embed_dim=16)),
     r"model.image takes no \['head_bias'\].*contrastive.image_proj"),
    (dict(text=TEXT, contrastive=dict(image_pool="map", image_pool_input="queries")),
     r"contrastive.image_pool_input 'queries'; valid: \['memory', 'tokens'\]"),
    (dict(text=TEXT, contrastive=dict(image_pool="map", image_pool_input="memory"), decoder=dict(variant="mu")),
     r"image_pool_input='memory' .* memory_queries=N >= 1"),
    (dict(decoder=dict(variant="mu", input="vit")), r"decoder.input 'vit'; valid: \['embed', 'text_tower'\]"),
    (dict(decoder=dict(variant="mu", input="text_tower")), r"input='text_tower' .* needs model.contrastive"),
    (dict(text=TEXT, contrastive=dict(embed_dim=16), decoder=dict(variant="mu", input="text_tower")),
     r"needs a causal text tower.*text.causal=True"),
    (dict(text=dict(TEXT, causal=True), contrastive=dict(embed_dim=16), decoder=dict(variant="mu", input="text_tower", mode="parallel")),
     r"decoder.mode='parallel' .* only valid mode is 'autoregressive'"),
    (dict(text=dict(TEXT, causal=True), contrastive=dict(embed_dim=16), decoder=dict(variant="mu", input="text_tower", width=64)),
     r"decoder width=64 must equal text width=32"),
    (dict(text=dict(TEXT, pool="cls"), contrastive=dict(embed_dim=16)), r"text pool='cls' .* causal=False"),
]


@pytest.mark.parametrize("keys, message", BAD)
def test_bad_new_keys_name_the_value(keys, message):
  cfg = dict(dict(name="composable", image=IMAGE), **keys)
  with pytest.raises(ValueError, match=message):
    get_model(cfg)
