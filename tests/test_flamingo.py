"""Flamingo: the untrained model is its LM, media masking, KV-cached decoding, frozen towers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from conftest import greedy_by_recompute
from vljax.data import prompts, tokenizers
from vljax.models import get_model

IMG, M, LEN = 16, 2, 24
TOK = tokenizers.get_tokenizer("shapes")
TEXT = dict(variant="mu", vocab_size=128, max_len=32)


def flamingo(**overrides):
  cfg = dict(name="flamingo", image=dict(variant="mu/8", posemb="sincos2d"), text=TEXT, num_latents=4,
             image_token_id=TOK.image_id)
  cfg.update(overrides)
  return get_model(cfg)


def batch(seed=0):
  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.normal(size=(2, M, IMG, IMG, 3)), jnp.float32)
  # Text before the first image, then two chunks; the second sequence has one image only.
  ids, _ = prompts.encode_chunks(TOK, [[("a red", ""), prompts.caption_chunk("a red circle"),
                                        prompts.vqa_chunk("what color is the star?", "blue")],
                                       [prompts.caption_chunk("a blue star")]], LEN)
  return images, jnp.asarray(ids)


def params_with_open_gates(model, images, ids, seed=0):
  """Random params with every gate at 0.5 (the untrained gates are 0: nothing would depend on images)."""
  params = nn.unbox(model.init(jax.random.PRNGKey(seed), image=images, text=ids)["params"])
  return jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.full_like(x, 0.5) if "gate" in jax.tree_util.keystr(path) else x, params)


@pytest.mark.slow
@pytest.mark.cross_path
def test_untrained_flamingo_is_exactly_its_language_model():
  images, ids = batch()
  model = flamingo(cross_attn_every_n_layers=1)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), image=images, text=ids)["params"])
  lm = get_model(dict(name="lm", text=TEXT))
  lm_params = {k: params[k] for k in ("txt", "lm", "logits")}
  assert set(jax.tree.leaves(jax.tree.map(lambda x: x.shape, lm_params))) == set(jax.tree.leaves(
      jax.tree.map(lambda x: x.shape, nn.unbox(lm.init(jax.random.PRNGKey(1), text=ids)["params"]))))
  got = model.apply({"params": params}, image=images, text=ids)["caption_logits"]
  want = lm.apply({"params": lm_params}, text=ids)["caption_logits"]
  assert float(jnp.max(jnp.abs(got - want))) == 0.0


@pytest.mark.cross_path
@pytest.mark.parametrize("immediate", [True, False])
def test_changing_an_image_changes_only_the_tokens_that_see_it(immediate):
  images, ids = batch()
  model = flamingo(only_attend_immediate_media=immediate)
  params = params_with_open_gates(model, images, ids)
  base = model.apply({"params": params}, image=images, text=ids)["caption_logits"]
  counts = np.cumsum(np.asarray(ids) == TOK.image_id, axis=1)
  for m in range(M):
    changed = images.at[:, m].add(1.0)
    out = model.apply({"params": params}, image=changed, text=ids)["caption_logits"]
    moved = np.any(np.abs(np.asarray(out - base)) > 1e-6, axis=-1)  # [B, L]
    # Causal LM: a token is changed if it, or any earlier token, sees image m.
    sees = (counts == m + 1) if immediate else (counts >= m + 1)
    expected = np.cumsum(sees, axis=1) > 0
    np.testing.assert_array_equal(moved, expected, err_msg=f"image {m}")
  assert not np.any(counts[0, :3] > 0)  # "a red" before the first image: sees none, never changes


@pytest.mark.cross_path
def test_kv_cached_generation_equals_recompute():
  from vljax.inference.runner import ModelRunner
  from vljax import decode as decode_lib
  from vljax.parallel.mesh import make_mesh
  images, ids = batch()
  model = flamingo()
  params = params_with_open_gates(model, images, ids)
  chunks = [[prompts.vqa_chunk("what color is the circle?", "red"), prompts.vqa_chunk("is there a star?")],
            [prompts.caption_chunk("a star"), prompts.vqa_chunk("how many objects are there?")]]
  pids, lengths = prompts.prompt_ids(TOK, chunks, LEN)
  pids = pids[:, :int(lengths.max())]
  mesh = make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    runner = ModelRunner(model, mesh, chunk=2, tokenizer=TOK)
    got = runner.generate(params, np.asarray(images), pids, lengths, decode_lib.DecodeOptions(max_len=3, min_len=3))
  assert got == greedy_by_recompute(model, params, images, pids, lengths, 3, TOK)


def test_config_errors():
  with pytest.raises(ValueError, match="scan=True is not supported"):
    flamingo(scan=True)
  with pytest.raises(ValueError, match="cross_attn_every_n_layers must be >= 1"):
    flamingo(cross_attn_every_n_layers=0)


def flamingo_config(frozen=(), **overrides):
  from conftest import tiny_config
  cfg = tiny_config(frozen=frozen, **overrides)
  cfg.evals = {}
  cfg.model = dict(name="flamingo", image=dict(variant="mu/8", posemb="sincos2d"), text=dict(variant="mu", max_len=56),
                   num_latents=4)
  cfg.objectives = {"captioning": 1.0}
  cfg.data.update(format="vlm", chunks=2, max_len=56, image_size=16)
  return cfg


FROZEN = ("img/.*", "txt/.*", "lm/.*", "logits/.*")


def test_frozen_towers_cost_no_gradient_flops():
  from vljax.data import pipeline
  from vljax.parallel.mesh import make_mesh
  from vljax.train import setup, state as state_lib, step as step_lib
  from vljax.train.trainer import _global_batch
  flops = {}
  for frozen in ((), ("img/.*",), FROZEN):
    cfg = flamingo_config(frozen)
    parts = setup.build(cfg)
    local = next(iter(pipeline.make_train_dataset(cfg.data, TOK, global_batch_size=cfg.batch_size, seed=0)))
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    with jax.set_mesh(mesh):
      # the abstract state: lowering needs shapes only, so neither the init nor the step compiles
      state, shardings = state_lib.plan_train_state(parts.model, parts.tx, cfg, mesh, state_lib.dummy_inputs(cfg, 1))
      step = step_lib.make_train_step(parts.model, parts.tx, cfg, parts.schedule, mesh, shardings)
      cost = step.lower(state, _global_batch(local, mesh)).cost_analysis()
    flops[frozen] = (cost[0] if isinstance(cost, list) else cost)["flops"]
  from vljax.models import flops as flops_lib
  from vljax.models.vit import vit_settings
  cfg = flamingo_config()
  images = cfg.batch_size * cfg.data.chunks
  img_forward = images * flops_lib.forward_flops(flops_lib.vit_parts(vit_settings("mu/8", posemb="sincos2d"),
                                                                     cfg.data.image_size)[0])
  lm_forward = cfg.batch_size * flops_lib.forward_flops(flops_lib.decoder_lm(dict(TEXT, **_mu_text(56)), 56, "text"))
  # Freezing the image tower drops its whole backward pass (weight and input gradients: nothing
  # below it trains), about 2x its forward. Freezing the LM as well drops its weight gradients
  # (about 1x its forward minus attention); its input gradients still reach the cross-attention.
  assert flops[()] - flops[("img/.*",)] > 1.8 * img_forward, (flops, img_forward)
  assert flops[("img/.*",)] - flops[FROZEN] > 0.5 * lm_forward, (flops, lm_forward)


def _mu_text(max_len):
  from vljax.models.text import text_settings
  return dict(text_settings("mu", vocab_size=TOK.vocab_size + (-TOK.vocab_size % 128), max_len=max_len))


def test_frozen_parts_stay_bit_identical_to_their_init_from_sources(tmp_path):
  from flax import traverse_util
  from conftest import tiny_config
  from random_workdirs import write_random_workdir
  from vljax.checkpoint_io import load_params
  from vljax.train.trainer import train_and_evaluate
  # The sources: a CLIP run and an LM run with random weights (what init_from reads is their checkpoint).
  clip, lm = tiny_config(evals={}), tiny_config(evals={})
  clip.model.image = dict(variant="mu/8", posemb="sincos2d")
  clip.data.image_size = 16
  lm.model = dict(name="lm", text=dict(variant="mu", max_len=56))
  lm.objectives = {"captioning": 1.0}
  lm.data.update(format="lm", chunks=2, max_len=56)
  write_random_workdir(str(tmp_path / "clip"), clip, seed=1)
  write_random_workdir(str(tmp_path / "lm"), lm, seed=2)
  cfg = flamingo_config(FROZEN, total_steps=3)
  cfg.init_from = dict(workdir="", subtree="", step=-1,
                       sources=(f"{tmp_path}/clip:img/embedding,img/encoder", f"{tmp_path}/lm:txt,lm,logits"))
  train_and_evaluate(cfg, str(tmp_path / "flamingo"))
  got = traverse_util.flatten_dict(load_params(str(tmp_path / "flamingo"))[0], sep="/")
  sources = {**traverse_util.flatten_dict(load_params(str(tmp_path / "lm"))[0], sep="/")}
  sources.update({k: v for k, v in traverse_util.flatten_dict(load_params(str(tmp_path / "clip"))[0],
                                                               sep="/").items()
                  if k.startswith(("img/embedding/", "img/encoder/"))})
  assert len(sources) > 20
  for k, v in sources.items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)
  assert any(not np.all(got[k] == 0) for k in got if "gate" in k)  # the gates did train


def test_sequences_that_would_cut_an_image_or_answer_are_errors():
  chunks = [prompts.caption_chunk("a red circle"), prompts.vqa_chunk("is there a star?", "yes")]
  with pytest.raises(ValueError, match=r"sequence 0 needs 17 tokens, more than max_len=12"):
    prompts.encode_chunks(TOK, [chunks], 12)
  with pytest.raises(ValueError, match=r"prompt 0 needs 9 tokens, more than max_len=8"):
    prompts.prompt_ids(TOK, [[prompts.caption_chunk("a red circle"), prompts.caption_chunk()]], 8)
