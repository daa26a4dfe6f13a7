"""Captioning models (CoCa, CapPa): KV cache == full recompute, masking, parallel prediction,
the captioning loss, objective options, likelihood scoring and captioning through the runner."""

import functools
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from conftest import greedy_by_recompute
from vljax import config as config_lib
from vljax import decode as decode_lib
from vljax import objectives
from vljax.data import tokenizers
from vljax.inference.runner import ModelRunner
from vljax.models import decoder, get_model
from vljax.parallel.mesh import make_mesh

B, IMG, LEN, VOCAB = 4, 16, 10, 40


def model_cfg(name, **overrides):
  cfg = dict(name=name, image=dict(variant="mu/8", posemb="sincos2d"),
             text=dict(variant="mu", vocab_size=VOCAB, max_len=LEN))
  if name == "coca":
    cfg.update(embed_dim=16, num_queries=4)
  cfg.update(overrides)
  return cfg


def inputs(seed=0, lengths=(10, 7, 4, 2)):
  rng = np.random.default_rng(seed)
  image = jnp.asarray(rng.normal(size=(len(lengths), IMG, IMG, 3)), jnp.float32)
  ids = np.zeros((len(lengths), LEN), np.int32)
  for i, n in enumerate(lengths):
    ids[i, :n] = rng.integers(1, VOCAB, size=n)
  return image, jnp.asarray(ids)


def params_of(model, image, ids, seed=0):
  variables = model.init({"params": jax.random.PRNGKey(seed), "dropout": jax.random.PRNGKey(1)},
                         image=image, text=ids, train=True)
  return nn.unbox(variables["params"])


# The plain CoCa (cascade pooler) and CapPa decode steps are tests/test_legacy_equivalence.py's; here
# the scanned layers, the parallel pooler and remat.
CASES = [("coca", dict(pooler="parallel", scan=True)), ("cappa", dict(scan=True, remat="full"))]


@pytest.mark.cross_path
@pytest.mark.parametrize("name,overrides", CASES)
def test_kv_cached_steps_equal_full_teacher_forcing(name, overrides):
  model = get_model(model_cfg(name, **overrides))
  image, ids = inputs()
  params = jax.jit(functools.partial(params_of, model))(image, ids)
  # jitted: a scanned model run op by op dispatches every layer's ops one at a time
  apply = jax.jit(lambda p, *args, method=None: model.apply({"params": p}, *args, method=method),
                  static_argnames="method")
  out = apply(params, image, ids)
  memory = apply(params, image, method="encode_image")["memory"]
  full = apply(params, memory, ids, method="caption_logits")
  # one token at a time vs the whole sequence: attention over the cached keys vs masked ones, logits ~1
  np.testing.assert_allclose(out["caption_logits"], full, atol=1e-5)
  cache = decoder.init_cache(model, params, memory, LEN)
  assert {x.shape[0] for x in jax.tree.leaves(cache)} == {B}  # batch leads every leaf (beam reorder)
  step = jax.jit(decoder.make_step_fn(model, params))
  for i in range(LEN):
    logits, cache = step(ids[:, i], cache, jnp.int32(i))
    np.testing.assert_allclose(logits, full[:, i], atol=1e-5, err_msg=f"position {i}")


@pytest.mark.cross_path
def test_caption_logits_never_look_ahead_and_coca_cls_sees_the_whole_caption():
  model = get_model(model_cfg("coca"))
  image, ids = inputs()
  params = params_of(model, image, ids)
  changed = ids.at[0, 6].set((ids[0, 6] % (VOCAB - 1)) + 1)
  a = model.apply({"params": params}, image=image, text=ids)
  b = model.apply({"params": params}, image=image, text=changed)
  np.testing.assert_array_equal(a["caption_logits"][0, :6], b["caption_logits"][0, :6])
  assert not np.allclose(a["caption_logits"][0, 6:], b["caption_logits"][0, 6:])
  assert not np.allclose(a["txt_emb"][0], b["txt_emb"][0])
  np.testing.assert_array_equal(a["txt_emb"][1:], b["txt_emb"][1:])


@pytest.mark.cross_path
def test_coca_text_embedding_ignores_padding():
  model = get_model(model_cfg("coca", text=dict(variant="mu", vocab_size=VOCAB, max_len=LEN + 6)))
  image, ids = inputs()
  params = params_of(model, image, ids)
  longer = jnp.pad(ids, ((0, 0), (0, 6)))
  a = model.apply({"params": params}, text=ids)["txt_emb"]
  b = model.apply({"params": params}, text=longer)["txt_emb"]
  # masked padding adds exact zeros: the same terms, other shapes (a rounding of values ~1)
  np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.cross_path
def test_cappa_parallel_prediction_sees_only_mask_tokens_and_no_causal_mask():
  image, ids = inputs()
  model = get_model(model_cfg("cappa", parallel_fraction=1.0))
  params = params_of(model, image, ids)
  run = lambda m, t, train: m.apply({"params": params}, image=image, text=t, train=train,
                                    rngs={"mask": jax.random.PRNGKey(3)})["caption_logits"]
  other = (ids % (VOCAB - 1)) + 1
  # mask tokens only: the same inputs whatever the caption, other values only behind the mask
  np.testing.assert_allclose(run(model, ids, True), run(model, other, True), atol=1e-6)
  # Position 0 of all-[MASK] input sees later positions, which a causal decoder never would.
  assert not np.allclose(run(model, ids, True)[:, 0], run(model, ids, False)[:, 0])
  # Evaluation is always causal teacher forcing; fraction 0 trains that way too.
  causal = get_model(model_cfg("cappa", parallel_fraction=0.0))
  # the same attention computed with and without a causal mask of all-True (a rounding of values ~1)
  np.testing.assert_allclose(run(causal, ids, True), run(model, ids, False), atol=1e-6)


@pytest.mark.cross_path
def test_captioning_loss_masks_pads_and_matches_optax():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(B, LEN, VOCAB)), jnp.float32)
  _, ids = inputs()
  loss, acc = objectives.captioning_loss(logits, ids)
  targets, real = ids[:, 1:], ids[:, 1:] != 0
  ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], targets)
  # optax's cross-entropy vs ours: the same float32 formula in other ops (a rounding or two)
  assert loss == pytest.approx(float(jnp.sum(ce * real) / jnp.sum(real)), rel=1e-6)
  # Logits at positions whose target is a pad do not matter.
  noisy = logits.at[3, 5:].add(100.0)
  assert objectives.captioning_loss(noisy, ids)[0] == pytest.approx(float(loss), rel=1e-6)
  smooth, _ = objectives.captioning_loss(logits, ids, label_smoothing=0.1)
  soft = optax.smooth_labels(jax.nn.one_hot(targets, VOCAB), 0.1)
  ce_smooth = optax.softmax_cross_entropy(logits[:, :-1], soft)
  # smoothing also sums all 128 log-probs: another 128-term order (2 gamma_127 = 1.5e-5 of its terms)
  assert smooth == pytest.approx(float(jnp.sum(ce_smooth * real) / jnp.sum(real)), rel=1e-5)
  assert 0.0 <= float(acc) <= 1.0


def test_objective_options_and_their_errors():
  logits = jnp.zeros((B, LEN, VOCAB))
  _, ids = inputs()
  out = {"caption_logits": logits}
  total, metrics = objectives.combined_loss({"captioning": {"weight": 2.0, "label_smoothing": 0.1}}, out,
                                            {"text": ids})
  assert total == pytest.approx(2.0 * float(metrics["captioning_loss"]))
  assert float(metrics["captioning_loss"]) == pytest.approx(np.log(VOCAB), rel=1e-5)
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['smoothing'\].*label_smoothing"):
    objectives.parse_objectives({"captioning": {"weight": 1.0, "smoothing": 0.1}})
  with pytest.raises(ValueError, match="needs a 'weight'"):
    objectives.parse_objectives({"captioning": {"label_smoothing": 0.1}})
  with pytest.raises(ValueError, match="needs model output 'caption_logits'"):
    objectives.combined_loss({"captioning": 1.0}, {"img_emb": None}, {"text": ids})


def test_captioning_objective_masks_the_run_pad_id_which_the_config_cannot_set():
  rng = np.random.default_rng(1)
  out = {"caption_logits": jnp.asarray(rng.normal(size=(B, LEN, VOCAB)), jnp.float32)}
  _, ids = inputs()
  pad = int(np.setdiff1d(np.arange(1, VOCAB), np.asarray(ids))[0])  # an id no caption uses
  repadded = jnp.where(ids == 0, pad, ids)
  spec = {"captioning": 1.0}
  want = float(objectives.combined_loss(spec, out, {"text": ids})[0])
  assert float(objectives.combined_loss(spec, out, {"text": repadded}, pad_id=pad)[0]) == want
  assert float(objectives.combined_loss(spec, out, {"text": repadded})[0]) != want  # pads trained on
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['pad_id'\]; valid: \['label_smoothing'\]"):
    objectives.parse_objectives({"captioning": {"weight": 1.0, "pad_id": 3}})


@pytest.mark.cross_path
def test_runner_likelihood_scores_and_sharded_captions_match_one_device():
  tok = tokenizers.get_tokenizer("shapes")
  cfg = model_cfg("cappa", text=dict(variant="mu", vocab_size=128, max_len=LEN))
  model = get_model(cfg)
  image, _ = inputs(lengths=(1,) * 8)
  ids = jnp.asarray(tok.encode(["a red circle", "a blue square on the left", "a star", "a green heart",
                                "a small cross", "a large diamond", "a white hexagon", "a black circle"],
                               LEN))
  params = params_of(model, image, ids)
  images, texts = np.asarray(image), np.asarray(ids)
  results = {}
  for mesh_cfg in (dict(data=1, fsdp=1, tensor=1), dict(data=4, fsdp=2, tensor=1)):
    mesh = make_mesh(mesh_cfg, devices=jax.devices()[:int(np.prod(list(mesh_cfg.values())))])
    with jax.set_mesh(mesh):
      runner = ModelRunner(model, mesh, chunk=8, tokenizer=tok)
      assert runner.generative and not runner.has_embeddings
      matrix = runner.loglik_matrix(params, images, texts)
      pairs = runner.pair_loglik(params, images, texts)
      options = decode_lib.DecodeOptions(method="beam", beam_size=3, max_len=LEN)
      results[mesh_cfg["data"]] = (matrix, runner.caption(params, images, options))
  matrix, (captions, scores) = results[1]
  # log-likelihoods, sums over ~10 tokens, in batches of other shapes and on 4 devices vs 1
  np.testing.assert_allclose(np.diag(matrix), pairs, rtol=1e-5)
  assert matrix.shape == (8, 8) and np.all(matrix < 0)
  np.testing.assert_allclose(results[4][0], matrix, rtol=1e-5)
  assert results[4][1][0] == captions
  np.testing.assert_allclose(results[4][1][1], scores, rtol=1e-5)


def test_runner_rejects_what_the_model_cannot_do():
  tok = tokenizers.get_tokenizer("shapes")
  mesh = make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
  cappa = ModelRunner(get_model(model_cfg("cappa")), mesh, 8, tok)
  with pytest.raises(ValueError, match="needs a model with contrastive embeddings"):
    cappa.resolve_scoring("embedding")
  with pytest.raises(ValueError, match="Unknown scoring 'cosine'"):
    cappa.resolve_scoring("cosine")
  with pytest.raises(ValueError, match=r"decode max_len=32 exceeds the model's text max_len 10"):
    cappa.caption(None, np.zeros((1, IMG, IMG, 3)), decode_lib.DecodeOptions(max_len=32))
  two_tower = dict(name="two_tower", embed_dim=16, image=dict(variant="mu/8"),
                   text=dict(variant="mu", vocab_size=VOCAB, max_len=LEN))
  clip = ModelRunner(get_model(two_tower), mesh, 8, tok)
  assert clip.resolve_scoring("auto") == "embedding"
  with pytest.raises(ValueError, match="captioning needs a model with a caption decoder"):
    clip.caption(None, np.zeros((1, IMG, IMG, 3)), decode_lib.DecodeOptions())


@pytest.mark.parametrize("bad,match", [
    (dict(pooler="serial"), "Unknown CoCa pooler 'serial'"),
    (dict(num_queries=0), "num_queries must be >= 1"),
    (dict(image=dict(variant="mu/8", pool="map")), "image.pool='map'"),
])
def test_coca_config_errors(bad, match):
  with pytest.raises(ValueError, match=match):
    get_model(model_cfg("coca", **bad))


def test_cappa_config_errors():
  with pytest.raises(ValueError, match=r"parallel_fraction=1.5 must be in \[0, 1\]"):
    get_model(model_cfg("cappa", parallel_fraction=1.5))  # composable's decoder.parallel_fraction


@pytest.mark.slow
@pytest.mark.cross_path
def test_decode_benchmark_paths_agree():
  from vljax.bench import decode as bench
  cfg = config_lib.load_config("configs/coca_shapes.py")
  cfg.model = model_cfg("coca")  # the recipe's own towers take a minute to compile here
  cfg.data.update(image_size=IMG, max_len=LEN)
  result = bench.run(cfg, batch=2, tokens=4, repeats=1)
  assert result["same_tokens"] and result["cached_s"] > 0 and result["recompute_s"] > 0
  # A text-only LM (an imported one is model "lm" with `lm` settings) decodes from BOS, no image.
  cfg.model = dict(name="lm", lm=dict(vocab_size=128, width=32, depth=1, num_heads=2, num_kv_heads=1, mlp_dim=64,
                                      max_len=LEN, norm="rmsnorm", positions="rope", mlp="swiglu"))
  result = bench.run(cfg, batch=2, tokens=4, repeats=1)
  assert result["same_tokens"] and result["cached_s"] > 0 and result["recompute_s"] > 0


@pytest.mark.cross_path
def test_prompts_of_unequal_length_continue_as_if_each_ran_alone():
  from vljax.data import prompts
  tok = tokenizers.get_tokenizer("shapes")
  model = get_model(dict(name="lm", text=dict(variant="mu", vocab_size=128, max_len=24)))
  questions = ["what color is the circle?", "how many objects are there?", "is there a star?",
               "what is to the left of the red square?"]
  ids, lengths = prompts.prompt_ids(tok, [[prompts.vqa_chunk(q, image=False)] for q in questions], 16)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), text=jnp.asarray(ids))["params"])
  mesh = make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
  options = decode_lib.DecodeOptions(max_len=6, min_len=6)  # no early <eoc>: compare all 6 tokens
  with jax.set_mesh(mesh):
    runner = ModelRunner(model, mesh, chunk=4, tokenizer=tok)
    together = runner.generate(params, None, ids, lengths, options)
    alone = [runner.generate(params, None, ids[i:i + 1, :n], lengths[i:i + 1], options)[0]
             for i, n in enumerate(lengths)]
  assert together == alone
  assert len(set(together)) > 1  # the continuations depend on the prompts


def llava_and_params(seed=0):
  tok = tokenizers.get_tokenizer("shapes")
  cfg = dict(name="llava", image=dict(variant="mu/8", posemb="sincos2d"), image_token_id=tok.image_id,
             text=dict(variant="mu", vocab_size=128, max_len=48))
  model = get_model(cfg)
  image = jnp.asarray(np.random.default_rng(seed).normal(size=(3, 1, IMG, IMG, 3)), jnp.float32)
  ids = jnp.asarray(tok.encode(["<image> caption: a red circle"] * 3, 12))
  params = nn.unbox(model.init(jax.random.PRNGKey(seed), image=image, text=ids)["params"])
  return tok, model, image, params


def test_llava_splices_image_tokens_at_the_image_token():
  from vljax.models.llava import splice
  ids = jnp.array([[1, 9, 5, 6, 0], [1, 5, 9, 6, 2]])
  text = jnp.broadcast_to(jnp.arange(5.0)[None, :, None], (2, 5, 1))
  image = jnp.full((2, 3, 1), -1.0)
  x, pos = splice(ids, text, image, image_token_id=9)
  np.testing.assert_array_equal(x[0, :, 0], [0, -1, -1, -1, 2, 3, 4])
  np.testing.assert_array_equal(x[1, :, 0], [0, 1, -1, -1, -1, 3, 4])
  np.testing.assert_array_equal(pos, [[0, 3, 4, 5, 6], [0, 1, 4, 5, 6]])  # <image> -> its last token


@pytest.mark.cross_path
def test_llava_generation_with_kv_cache_equals_greedy_recompute():
  from vljax.data import prompts
  tok, model, image, params = llava_and_params()
  questions = ["what color is the circle?", "how many objects are there?", "is there a star?"]
  ids, lengths = prompts.prompt_ids(tok, [[prompts.vqa_chunk(q)] for q in questions], 16)
  ids = ids[:, :int(lengths.max())]
  mesh = make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
  options = decode_lib.DecodeOptions(max_len=4, min_len=4)
  with jax.set_mesh(mesh):
    runner = ModelRunner(model, mesh, chunk=3, tokenizer=tok)
    got = runner.generate(params, np.asarray(image), ids, lengths, options)
    with pytest.raises(ValueError, match="prompt 0 has 1 <image> tokens but 2 images are given"):
      runner.generate(params, np.repeat(np.asarray(image), 2, axis=1), ids, lengths, options)
  assert got == greedy_by_recompute(model, params, image, ids, lengths, 4, tok)


def test_sampling_draws_fresh_noise_in_every_chunk():
  """Two chunks holding the same inputs: sampled rows differ between the chunks (each chunk folds
  its number into the key), greedy rows agree."""
  from vljax.data import prompts
  tok = tokenizers.get_tokenizer("shapes")
  mesh = make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
  sample = decode_lib.DecodeOptions(method="sample", temperature=2.0, max_len=6, min_len=6)
  greedy = decode_lib.DecodeOptions(max_len=6, min_len=6)
  cappa = get_model(model_cfg("cappa", text=dict(variant="mu", vocab_size=128, max_len=LEN)))
  image, ids = inputs(lengths=(3, 5))
  cappa_params = params_of(cappa, image, ids)
  images = np.tile(np.asarray(image), (2, 1, 1, 1))  # chunk 0 and chunk 1: the same two images
  lm = get_model(dict(name="lm", text=dict(variant="mu", vocab_size=128, max_len=24)))
  questions = ["what color is the circle?", "is there a star?"] * 2
  prompt, lengths = prompts.prompt_ids(tok, [[prompts.vqa_chunk(q, image=False)] for q in questions], 16)
  lm_params = nn.unbox(lm.init(jax.random.PRNGKey(0), text=jnp.asarray(prompt))["params"])
  with jax.set_mesh(mesh):
    for model, run in (
        (cappa, lambda r, o: r.caption(cappa_params, images, o, jax.random.PRNGKey(5))[1]),
        (lm, lambda r, o: r.generate(lm_params, None, prompt, lengths, o, jax.random.PRNGKey(5)))):
      runner = ModelRunner(model, mesh, chunk=2, tokenizer=tok)
      sampled, same = run(runner, sample), run(runner, greedy)
      # caption: the samples' log-probs; generate: their text
      assert all(sampled[r] != sampled[r + 2] for r in range(2)), sampled
      assert list(same[:2]) == list(same[2:])
