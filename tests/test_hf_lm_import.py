"""Hugging Face decoder-only LMs imported into vljax's `lm` model (vljax/convert/hf_lm.py, models/causal_lm.py):
logits and greedy generation against transformers for GPT-2, OPT, Llama (untied, sharded safetensors), Mistral
(grouped-query attention, head_dim != width / heads) and Qwen2 (qkv bias, tied, one KV head); the workdir; new
token rows under a frozen LM; LLaVA with lm="hf:DIR"; bad folders."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import hf_reference as ref  # noqa: E402
import vljax  # noqa: E402
from vljax import decode as decode_lib  # noqa: E402
from vljax.convert import hf_lm  # noqa: E402
from vljax.convert.__main__ import main as convert_main  # noqa: E402
from vljax.data import tokenizers  # noqa: E402
from vljax.models import decoder, get_model  # noqa: E402

FAMILIES = ("gpt2", "opt", "llama", "mistral", "qwen2")
SHARDED = "llama"  # saved in shards with model.safetensors.index.json
TOLERANCE = 1e-4  # max |logit difference|, float32
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  """family -> (transformers model, its folder, the import); built on first use."""
  root, cache = tmp_path_factory.mktemp("hf_lm"), {}

  def get(family: str):
    if family not in cache:
      model = ref.random_lm(family)
      folder = root / family
      model.save_pretrained(folder, **(dict(max_shard_size="100KB") if family == SHARDED else {}))
      ref.write_lm_tokenizer(family, folder)
      converted = hf_lm.import_lm(str(folder))
      cache[family] = (model, folder, converted._replace(params=jax.tree.map(jnp.asarray, converted.params)))
    return cache[family]
  return get


def vljax_logits(converted, hf_ids: np.ndarray) -> np.ndarray:
  """Logits over the checkpoint's vocabulary (vljax's columns id_offset.. id_offset + vocab)."""
  off = converted.data["id_offset"]
  model = get_model(converted.model_cfg)
  logits = jax.jit(lambda p, ids: model.apply({"params": p}, None, ids, method="caption_logits"))(
      converted.params, jnp.asarray(hf_ids + off))
  return np.asarray(logits)


@pytest.mark.cross_path
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(imported, family):
  model, folder, converted = imported(family)
  hf_ids = ref.lm_prompt_ids(2, 12)
  ours, off = vljax_logits(converted, hf_ids), converted.data["id_offset"]
  reference = ref.hf_lm_logits(model, hf_ids)
  err = float(np.abs(ours[..., off:off + ref.LM_VOCAB] - reference).max())
  print(f"{family}: max |logit difference| {err:.2e}, logits up to {np.abs(reference).max():.2f}")
  assert err < TOLERANCE
  # Rows the checkpoint lacks (padding, <image>, <eoc>, rounding) sit at the mean logit: never the top one.
  others = np.delete(ours, np.arange(off, off + ref.LM_VOCAB), axis=-1)
  assert (others.max(-1) < reference.max(-1)).all()
  if family == SHARDED:
    assert (folder / hf_lm.INDEX).is_file() and len(list(folder.glob("model-*.safetensors"))) > 1


@pytest.mark.cross_path
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_with_kv_cache_matches_generate(imported, family):
  """Prompts of unequal lengths (right-padded for vljax, each its own row for transformers)."""
  model, _, converted = imported(family)
  off, lengths = converted.data["id_offset"], np.array([5, 9])
  hf_ids = ref.lm_prompt_ids(2, 9, seed=1)
  reference = ref.hf_lm_greedy(model, [row[:n] for row, n in zip(hf_ids, lengths)], NEW_TOKENS)
  ids = np.where(np.arange(9) < lengths[:, None], hf_ids + off, 0)
  lm = get_model(converted.model_cfg)
  greedy = jax.jit(lambda params, ids, lengths: decoder.continue_prompts(
      lm, params, None, ids, lengths, decode_lib.DecodeOptions(max_len=NEW_TOKENS), cache_len=20, eos_id=-1,
      pad_id=0))
  out = greedy(converted.params, jnp.asarray(ids), jnp.asarray(lengths))
  np.testing.assert_array_equal(np.asarray(out.tokens) - off, reference)


def test_tokenizer_from_the_folder(imported):
  _, folder, converted = imported("llama")
  spec = converted.data["tokenizer"]
  assert spec == f"hf:{folder / 'tokenizer.json'}"
  tok = tokenizers.get_tokenizer(spec)
  # Llama's vocabulary: <unk> at 0, so every id moves up one and 0 is vljax's padding.
  assert tok.id_offset == converted.data["id_offset"] == 1
  np.testing.assert_array_equal(tok.encode(["w5 w7"], 6)[0], [1 + 1, 5 + 1, 7 + 1, 2 + 1, 0, 0])
  assert tok.image_id < converted.model_cfg["lm"]["vocab_size"]


@pytest.mark.cross_path
def test_cli_workdir_opens_with_vljax_load(imported, tmp_path):
  _, folder, converted = imported("qwen2")
  out = tmp_path / "qwen2"
  assert convert_main(["--checkpoint", str(folder), "--workdir", str(out), "--max_len", "16"]) == 0
  cfg = json.loads((out / "config.json").read_text())
  assert cfg["model"]["name"] == "lm" and cfg["model"]["lm"]["positions"] == "rope" and cfg["data"]["max_len"] == 16
  assert cfg["data"]["tokenizer"] == converted.data["tokenizer"]
  loaded = vljax.load(str(out))
  hf_ids = ref.lm_prompt_ids(1, 7)
  logits = jax.jit(lambda p, ids: loaded.model.apply({"params": p}, None, ids, method="caption_logits"))(
      loaded.params, jnp.asarray(hf_ids + 1))
  np.testing.assert_allclose(np.asarray(logits), vljax_logits(converted, hf_ids), atol=1e-5)
  # Tied embeddings: no separate head.
  assert "logits" not in loaded.params


def test_parameters_carry_logical_axis_names(imported):
  _, _, converted = imported("mistral")
  model = get_model(converted.model_cfg)
  boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), text=jnp.zeros((1, 4), jnp.int32)))["params"]
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: hasattr(x, "names"))
  assert leaves and all(hasattr(x, "names") and len(x.names) == len(x.value.shape) for x in leaves)
  assert boxed["lm"]["block_0"]["attn"]["key"]["kernel"].names == ("embed", "heads", "kv")


# The imported LM frozen, its new token rows not: what LLaVA / Flamingo runs freeze.
FROZEN_LM = ["txt/(embedding|posemb)/.*", "lm/.*", "logits/kernel"]


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # untied and tied heads
def test_new_token_rows_train_under_a_frozen_lm(imported, family):
  from flax import traverse_util
  from vljax.train import optim
  _, _, converted = imported(family)
  tok = tokenizers.get_tokenizer(converted.data["tokenizer"])
  new_ids = converted.model_cfg["lm"]["new_token_ids"]
  assert {tok.image_id, tok.eoc_id} <= set(new_ids)
  params = converted.params
  trainable, _ = optim.split_frozen(params, [p for p in FROZEN_LM if family == "llama" or p != "logits/kernel"])
  assert sorted(traverse_util.flatten_dict(trainable, sep="/")) == sorted(
      ["txt/new_tokens"] + (["logits/new_tokens"] if family == "llama" else []))
  model = get_model(converted.model_cfg)
  ids = jnp.asarray([[tok.bos_id, 5, tok.eoc_id, 7, 9, tok.eoc_id]])

  def eoc_logp(p):  # log p(<eoc>) where the text has it, after an <eoc> in the input
    logp = jax.nn.log_softmax(model.apply({"params": p}, None, ids, method="caption_logits"))
    return logp[0, 4, tok.eoc_id] + logp[0, 1, tok.eoc_id]

  grads = traverse_util.flatten_dict(jax.jit(jax.grad(eoc_logp))(params), sep="/")
  row = new_ids.index(tok.eoc_id)
  assert float(jnp.abs(grads["txt/new_tokens"][row]).sum()) > 0
  if family == "llama":
    assert float(jnp.abs(grads["logits/new_tokens"][row]).sum()) > 0
    assert float(jnp.abs(grads["logits/kernel"][:, tok.eoc_id]).sum()) == 0  # the table's row is not read
  assert float(jnp.abs(grads["txt/embedding/embedding"][tok.eoc_id]).sum()) == 0


# ---- bad input -------------------------------------------------------------------------------------------

def rewrite_config(folder, **changes):
  path = folder / "config.json"
  path.write_text(json.dumps(dict(json.loads(path.read_text()), **changes)))


def test_folder_without_config_json(tmp_path):
  with pytest.raises(FileNotFoundError, match="no config.json"):
    hf_lm.import_lm(str(tmp_path))
  assert convert_main(["--checkpoint", str(tmp_path / "absent"), "--workdir", str(tmp_path / "w"),
                       "--format", "hf_lm"]) == 2


def test_unsupported_model_type_names_the_supported_ones(imported, tmp_path):
  folder = shutil.copytree(imported("gpt2")[1], tmp_path / "m")
  rewrite_config(folder, model_type="bert")
  with pytest.raises(ValueError, match=r"model_type 'bert' is not supported; valid: \['gpt2', 'llama'"):
    hf_lm.import_lm(str(folder))


def test_unsupported_rope_scaling(imported, tmp_path):
  folder = shutil.copytree(imported("llama")[1], tmp_path / "m")
  rewrite_config(folder, rope_parameters=dict(rope_type="llama3", rope_theta=500.0, factor=8.0))
  with pytest.raises(ValueError, match="rope_type 'llama3' is not supported"):
    hf_lm.import_lm(str(folder))


def test_missing_tensor_is_named(imported, tmp_path):
  import safetensors.numpy
  folder = shutil.copytree(imported("gpt2")[1], tmp_path / "m")
  tensors = safetensors.numpy.load_file(str(folder / "model.safetensors"))
  del tensors["transformer.h.1.mlp.c_fc.bias"]
  safetensors.numpy.save_file(tensors, str(folder / "model.safetensors"))
  with pytest.raises(ValueError, match=r"no tensor 'transformer\.h\.1\.mlp\.c_fc\.bias'"):
    hf_lm.import_lm(str(folder))


def test_shapes_that_disagree_with_the_config(imported, tmp_path):
  folder = shutil.copytree(imported("opt")[1], tmp_path / "m")
  rewrite_config(folder, ffn_dim=256)
  with pytest.raises(ValueError, match=r"lm/block_0/mlp/fc1/bias has shape \(128,\), but config.json implies "
                                       r"\(256,\)"):
    hf_lm.import_lm(str(folder))
  rewrite_config(folder, ffn_dim=128, num_hidden_layers=3)
  with pytest.raises(ValueError, match="2 blocks of weights, but config.json says 3 layers"):
    hf_lm.import_lm(str(folder))
  folder = shutil.copytree(imported("mistral")[1], tmp_path / "gqa")
  rewrite_config(folder, num_key_value_heads=4)
  with pytest.raises(ValueError, match=r"block 0's key projection \(as \[in, out\]\) has shape \(64, 16\), but "
                                       r"config.json implies \(64, 32\)"):
    hf_lm.import_lm(str(folder))


def test_missing_shard_is_named(imported, tmp_path):
  folder = shutil.copytree(imported(SHARDED)[1], tmp_path / "m")
  (folder / "model-00002-of-00004.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match="shard 'model-00002-of-00004.safetensors'"):
    hf_lm.import_lm(str(folder))


def test_tokenizer_of_another_vocabulary(imported, tmp_path):
  import tokenizers as hf_tokenizers
  folder = shutil.copytree(imported("qwen2")[1], tmp_path / "m")
  bigger = {f"w{i}": i for i in range(ref.LM_VOCAB + 50)}
  hf_tokenizers.Tokenizer(hf_tokenizers.models.WordLevel(bigger, unk_token="w0")).save(str(folder / "tokenizer.json"))
  with pytest.raises(ValueError, match=f"has {ref.LM_VOCAB + 50} tokens but the checkpoint's embedding has "
                                       f"{ref.LM_VOCAB} rows"):
    hf_lm.import_lm(str(folder))


def test_sequence_longer_than_the_positions(imported):
  _, _, converted = imported("qwen2")
  with pytest.raises(ValueError, match=f"exceeds the language model's max_len={ref.LM_LEN}"):
    vljax_logits(converted, ref.lm_prompt_ids(1, ref.LM_LEN + 1))


@pytest.mark.cross_path
def test_lm_config_reads_the_folder(imported):
  """name="lm", lm="hf:DIR" builds the imported architecture from config.json and tokenizer.json alone."""
  _, folder, converted = imported("opt")
  model = get_model(dict(name="lm", lm=f"hf:{folder}"))
  assert model.text == get_model(converted.model_cfg).text
  ids = ref.lm_prompt_ids(1, 6) + converted.data["id_offset"]
  np.testing.assert_allclose(jax.jit(lambda p: model.apply({"params": p}, None, ids, method="caption_logits"))(
                                 converted.params),
                             vljax_logits(converted, ids - converted.data["id_offset"]), atol=1e-5)
  with pytest.raises(ValueError, match="give one of them"):
    get_model(dict(name="lm", lm=f"hf:{folder}", text=dict(variant="mu")))
  with pytest.raises(ValueError, match=r"Unknown lm settings \['heads'\]"):
    get_model(dict(name="lm", lm=dict(converted.model_cfg["lm"], heads=3)))


# ---- LLaVA with an imported language model (lm="hf:DIR") --------------------------------------------------

def llava_with_imported_lm(imported, family):
  from flax import linen as nn
  _, folder, converted = imported(family)
  tok = tokenizers.get_tokenizer(converted.data["tokenizer"])
  model = get_model(dict(name="llava", image=dict(variant="mu/8", posemb="sincos2d"), image_token_id=tok.image_id,
                         lm=f"hf:{folder}"))
  image = jnp.asarray(np.random.default_rng(0).normal(size=(2, 1, 16, 16, 3)), jnp.float32)
  ids = jnp.asarray(tok.encode(["w5 w7 w9 <image>", "w11 <image> w12"], 8))
  fresh = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), image=image, text=ids)["params"])
  return tok, model, image, ids, fresh, converted


@pytest.mark.cross_path
@pytest.mark.parametrize("family", ["llama", "gpt2"])  # RoPE, untied / learned positions, tied
def test_llava_language_half_is_the_imported_lm(imported, family):
  tok, model, image, ids, fresh, converted = llava_with_imported_lm(imported, family)
  shapes = lambda tree: jax.tree.map(lambda a: a.shape, tree)
  lm_keys = [k for k in ("txt", "lm", "logits") if k in converted.params]
  assert shapes({k: fresh[k] for k in lm_keys}) == shapes(converted.params)  # init_from txt,lm,logits fits
  params = dict(fresh, **converted.params)
  logits = np.asarray(jax.jit(model.apply)({"params": params}, image, ids)["caption_logits"])
  # Text before "<image>" sees no image: there LLaVA's logits are the imported LM's own.
  lm_logits = vljax_logits(converted, np.asarray(ids[:1, :4]) - converted.data["id_offset"])
  np.testing.assert_allclose(logits[0, :4], lm_logits[0], atol=TOLERANCE)
  assert not np.allclose(logits[1, 2:4], lm_logits[0, 2:4], atol=1e-3)  # after its image, row 1 differs


@pytest.mark.slow
@pytest.mark.cross_path
def test_llava_with_imported_lm_generates_as_greedy_recompute(imported):
  from conftest import greedy_by_recompute
  from vljax.inference.runner import ModelRunner
  from vljax.parallel.mesh import make_mesh
  tok, model, image, ids, fresh, converted = llava_with_imported_lm(imported, "qwen2")
  params = dict(fresh, **converted.params)
  prompts = jnp.asarray(tok.encode(["<image> w5 w6", "w9 <image> w4"], 5))
  lengths = np.asarray((prompts != 0).sum(1) - 1)  # without EOS: generation continues the prompt
  mesh = make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    runner = ModelRunner(model, mesh, chunk=2, tokenizer=tok)
    got = runner.generate(params, np.asarray(image), np.asarray(prompts), lengths,
                          decode_lib.DecodeOptions(max_len=4, min_len=4))
  assert got == greedy_by_recompute(model, params, image, np.asarray(prompts), lengths, 4, tok)


def test_llava_lm_and_text_are_exclusive(imported):
  _, folder, _ = imported("qwen2")
  with pytest.raises(ValueError, match="give one of them"):
    get_model(dict(name="llava", image=dict(variant="mu/8"), image_token_id=3, lm=f"hf:{folder}",
                   text=dict(variant="mu")))
  with pytest.raises(ValueError, match="valid forms are 'hf:/path/to/hf_model_folder'"):
    get_model(dict(name="llava", image=dict(variant="mu/8"), image_token_id=3, lm=str(folder)))


# ---- Flamingo with an imported language model ------------------------------------------------------------

def flamingo_with_imported_lm(imported):
  """Mistral: RoPE positions through Flamingo's layer-by-layer LM, grouped-query attention."""
  from flax import linen as nn
  _, folder, converted = imported("mistral")
  tok = tokenizers.get_tokenizer(converted.data["tokenizer"])
  model = get_model(dict(name="flamingo", image=dict(variant="mu/8", posemb="sincos2d"), num_latents=4,
                         resampler_depth=1, image_token_id=tok.image_id, lm=f"hf:{folder}"))
  image = jnp.asarray(np.random.default_rng(0).normal(size=(2, 1, 16, 16, 3)), jnp.float32)
  ids = jnp.asarray(tok.encode(["<image> w5 w7 w9", "w11 <image> w12 w4"], 8))
  params = dict(nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), image=image, text=ids)["params"]),
                **converted.params)
  return tok, model, image, ids, params, converted


def open_gates(params):
  return jax.tree_util.tree_map_with_path(lambda path, p: p + 0.5 if "gate" in jax.tree_util.keystr(path) else p,
                                          params)


@pytest.mark.slow  # out of CI's instruction-set rerun (its time); still in make test
@pytest.mark.cross_path
def test_flamingo_with_imported_lm_starts_as_the_lm(imported):
  """Its gates start at 0: the untrained Flamingo's logits are the imported LM's everywhere."""
  tok, model, image, ids, params, converted = flamingo_with_imported_lm(imported)
  forward = jax.jit(lambda p: model.apply({"params": p}, image, ids)["caption_logits"])
  lm_logits = vljax_logits(converted, np.asarray(ids) - converted.data["id_offset"])
  np.testing.assert_allclose(np.asarray(forward(params)), lm_logits, atol=TOLERANCE)
  opened = np.asarray(forward(open_gates(params)))  # the gated layers now count
  assert np.abs(opened - lm_logits).max() > 1e-3


@pytest.mark.slow
@pytest.mark.cross_path
def test_flamingo_with_imported_lm_generates_as_greedy_recompute(imported):
  from conftest import greedy_by_recompute
  from vljax.inference.runner import ModelRunner
  from vljax.parallel.mesh import make_mesh
  tok, model, image, _, params, _ = flamingo_with_imported_lm(imported)
  params = open_gates(params)
  prompts = np.asarray(tok.encode(["<image> w5 w6", "w9 <image> w4"], 5))
  lengths = (prompts != 0).sum(1) - 1  # without EOS: generation continues the prompt
  mesh = make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    got = ModelRunner(model, mesh, chunk=2, tokenizer=tok).generate(
        params, np.asarray(image), prompts, lengths, decode_lib.DecodeOptions(max_len=4, min_len=4))
  assert got == greedy_by_recompute(model, params, image, prompts, lengths, 4, tok)


@pytest.mark.slow
def test_llava_trains_on_an_imported_frozen_lm(imported, tmp_path):
  """The recipe's chain: python -m vljax.convert, then LLaVA with lm=hf:DIR, init_from the converted workdir and
  the LM frozen: its weights stay the imported ones, the projector and the new token rows train."""
  import conftest
  from flax import traverse_util
  from vljax import checkpoint_io
  from vljax.train import trainer
  _, folder, converted = imported("llama")
  lm_dir = tmp_path / "lm"
  assert convert_main(["--checkpoint", str(folder), "--workdir", str(lm_dir)]) == 0
  cfg = conftest.tiny_config(evals={}, total_steps=2, batch_size=8)
  cfg.model = dict(name="llava", image=dict(variant="mu/8", depth=1, posemb="sincos2d"), lm=f"hf:{folder}")
  cfg.objectives = {"captioning": 1.0}
  cfg.data.update(format="vlm", max_len=24, image_size=16, tokenizer=converted.data["tokenizer"])
  cfg.init_from = dict(workdir="", subtree="", step=-1, sources=(f"{lm_dir}:txt,lm,logits",))
  cfg.frozen = tuple(FROZEN_LM)
  cfg.checkpoint = dict(every=2, keep=1, async_save=False)
  trainer.train_and_evaluate(cfg, str(tmp_path / "llava"))
  trained = traverse_util.flatten_dict(checkpoint_io.load_params(str(tmp_path / "llava"), None)[0], sep="/")
  imported_params = traverse_util.flatten_dict(converted.params, sep="/")
  for name in ("txt/embedding/embedding", "lm/block_1/attn/key/kernel", "logits/kernel"):
    np.testing.assert_array_equal(trained[name], imported_params[name])
  for name in ("txt/new_tokens", "logits/new_tokens"):
    assert np.abs(trained[name] - imported_params[name]).max() > 0, name
