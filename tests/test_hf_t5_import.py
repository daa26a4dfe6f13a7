"""Hugging Face T5 / FlanT5 imported into vljax's `seq2seq_lm` model (vljax/convert/hf_t5.py,
models/seq2seq_lm.py): encoder outputs, logits and greedy KV-cached generation against transformers for a T5
v1.0 model (relu, tied head, one safetensors file) and a FlanT5-style one (gated-gelu, untied head, shards);
soft prompts before the text (encode_embeddings); the relative position buckets at T5's real sizes; the
workdir; logical axis names; bad folders."""

import functools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import vljax  # noqa: E402
from vljax import decode as decode_lib  # noqa: E402
from vljax.convert import hf_t5  # noqa: E402
from vljax.convert.__main__ import main as convert_main  # noqa: E402
from vljax.data import tokenizers  # noqa: E402
from vljax.models import get_model, seq2seq_lm  # noqa: E402

VOCAB = 100
SPECIALS = {0: "<pad>", 1: "</s>", 2: "<unk>"}  # T5's ids
KINDS = {  # kind -> (feed_forward_proj, untied head, saved in shards)
    "t5": ("relu", False, False),  # T5 v1.0
    "flan_t5": ("gated-gelu", True, True),  # T5 v1.1 / FlanT5
}
TOLERANCE = 1e-4  # max |difference| of encoder outputs and logits, float32
NEW_TOKENS = 8


def random_t5(kind: str):
  """A transformers T5ForConditionalGeneration with random weights: N(0, 0.1) everywhere (norm scales
  around 1), and for flan_t5 a head of its own, so a mapping error anywhere shows; float32, eval mode."""
  proj, untied, _ = KINDS[kind]
  torch.manual_seed(0 if kind == "t5" else 1)
  config = transformers.T5Config(vocab_size=VOCAB, d_model=32, d_ff=64, num_layers=2, num_heads=2, d_kv=16,
                                 relative_attention_num_buckets=8, relative_attention_max_distance=20,
                                 feed_forward_proj=proj, tie_word_embeddings=not untied, decoder_start_token_id=0)
  model = transformers.T5ForConditionalGeneration(config)
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(0.1 * torch.randn_like(p) + (1.0 if "layer_norm" in name else 0.0))
    if untied:  # transformers ties the head in memory; FlanT5's checkpoints store one of their own
      model.lm_head.weight = torch.nn.Parameter(0.1 * torch.randn_like(model.shared.weight))
      model.config.tie_word_embeddings = False
  return model.eval()


def write_tokenizer(folder, size: int = VOCAB, pad: str = "<pad>") -> None:
  """A word-level tokenizer.json: T5's <pad>, </s>, <unk> at 0, 1, 2 (pad renamed: a vocabulary without
  padding at 0) and "w<i>" at every other id."""
  import tokenizers as hf_tokenizers
  specials = {**SPECIALS, 0: pad}
  vocab = {specials.get(i, f"w{i}"): i for i in range(size)}
  tok = hf_tokenizers.Tokenizer(hf_tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = hf_tokenizers.pre_tokenizers.WhitespaceSplit()
  tok.add_special_tokens(list(specials.values()))
  tok.save(str(folder / "tokenizer.json"))


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  """kind -> (transformers model, its folder, the import with jax params); built on first use."""
  root, cache = tmp_path_factory.mktemp("hf_t5"), {}

  def get(kind: str):
    if kind not in cache:
      model, folder = random_t5(kind), root / kind
      model.save_pretrained(folder, **(dict(max_shard_size="40KB") if KINDS[kind][2] else {}))
      write_tokenizer(folder)
      converted = hf_t5.import_t5(str(folder))
      cache[kind] = (model, folder, converted._replace(params=jax.tree.map(jnp.asarray, converted.params)))
    return cache[kind]
  return get


def inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Encoder ids [2, 9] (content, </s>, padding: 9 and 6 real tokens) and decoder ids [2, 7] (start first)."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, VOCAB, (2, 9))
  ids[0, 8], ids[1, 5], ids[1, 6:] = 1, 1, 0
  decoder_ids = rng.integers(3, VOCAB, (2, 7))
  decoder_ids[:, 0] = 0
  return ids, decoder_ids


@functools.cache
def jitted(model_cfg_json: str, method: str):
  model = get_model(json.loads(model_cfg_json))
  return jax.jit(lambda p, *a: model.apply({"params": p}, *a, method=method))


def apply(converted, method: str, *args):
  """The converted model's `method` on args (compiled once per model and method)."""
  return np.asarray(jitted(json.dumps(converted.model_cfg), method)(converted.params, *args))


@pytest.mark.cross_path
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_encoder_outputs_and_logits_match_transformers(imported, kind):
  model, folder, converted = imported(kind)
  ids, decoder_ids = inputs()
  mask = ids != 0
  with torch.no_grad():
    ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask).long(),
                decoder_input_ids=torch.from_numpy(decoder_ids))
  hidden = apply(converted, "encode", ids)
  logits = apply(converted, "decode_logits", hidden, mask, decoder_ids)
  enc_err = float(np.abs(hidden - ref.encoder_last_hidden_state.numpy())[mask].max())  # padded rows: unused
  err = float(np.abs(logits[..., :VOCAB] - ref.logits.numpy()).max())
  print(f"{kind}: max |encoder difference| {enc_err:.2e}, max |logit difference| {err:.2e}, logits up to "
        f"{np.abs(ref.logits.numpy()).max():.2f}")
  assert enc_err < TOLERANCE and err < TOLERANCE
  # Rows the checkpoint lacks (the tokenizer's BOS, <image>, <eoc>, rounding) sit at the mean logit.
  assert (logits[..., VOCAB:].max(-1) < ref.logits.numpy().max(-1)).all()
  s = converted.model_cfg["lm"]
  untied, sharded = KINDS[kind][1:]
  assert (s["tie_embeddings"], s["scale_output"], "logits" in converted.params) == (not untied, not untied, untied)
  assert (folder / "model.safetensors.index.json").is_file() == sharded
  if sharded:
    assert len(list(folder.glob("model-*.safetensors"))) > 1


@pytest.mark.cross_path
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_greedy_generation_with_kv_cache_matches_generate(imported, kind):
  """Inputs of unequal lengths (padded) in one batch; vljax's cache in jit, transformers' generate."""
  model, _, converted = imported(kind)
  ids, _ = inputs(seed=2)
  with torch.no_grad():
    reference = model.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(ids != 0).long(),
                               do_sample=False, num_beams=1, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                               eos_token_id=None).numpy()
  lm = get_model(converted.model_cfg)

  @jax.jit
  def greedy(params, ids):
    hidden = lm.apply({"params": params}, ids, method="encode")
    return seq2seq_lm.generate(lm, params, hidden, ids != 0, decode_lib.DecodeOptions(max_len=NEW_TOKENS),
                               eos_id=-1, cache_len=12).tokens
  assert (reference[:, 0] == seq2seq_lm.START_ID).all()
  np.testing.assert_array_equal(np.asarray(greedy(converted.params, jnp.asarray(ids))), reference[:, 1:])


def test_decode_steps_at_per_sequence_positions_equal_teacher_forcing(imported):
  """decode_step one token at a time, each sequence at its own position ([B] decode_index, the cache's
  per-sequence path, bias rows per sequence), gives decode_logits' logits."""
  _, _, converted = imported("t5")
  ids, decoder_ids = inputs(seed=5)
  hidden = apply(converted, "encode", ids)
  model = get_model(converted.model_cfg)
  _, variables = model.apply({"params": converted.params}, np.zeros((2, 10), np.int32), hidden, ids != 0,
                             jnp.zeros((), jnp.int32), method="decode_step", mutable=["cache"])

  @jax.jit
  def step(cache, tokens, index):
    logits, variables = model.apply({"params": converted.params, "cache": cache}, tokens[:, None], None, None, index,
                                    method="decode_step", mutable=["cache"])
    return logits[:, 0], variables["cache"]
  cache, steps = variables["cache"], []
  for t in range(decoder_ids.shape[1]):
    logits, cache = step(cache, jnp.asarray(decoder_ids[:, t]), jnp.full((2,), t, jnp.int32))
    steps.append(np.asarray(logits))
  np.testing.assert_allclose(np.stack(steps, 1), apply(converted, "decode_logits", hidden, ids != 0, decoder_ids),
                             atol=1e-5)


@pytest.mark.cross_path
def test_soft_prompts_before_the_text_match_transformers_inputs_embeds(imported):
  """encode_embeddings: encode(ids) is encode_embeddings(embed(ids)); vectors prepended to the embedded text
  (a prefix LM's soft prompts, BLIP-2's Q-Former outputs) give transformers' encoder on inputs_embeds."""
  model, _, converted = imported("flan_t5")
  ids, decoder_ids = inputs(seed=3)
  mask = ids != 0
  embedded = apply(converted, "embed", ids)
  np.testing.assert_allclose(apply(converted, "encode_embeddings", embedded, mask), apply(converted, "encode", ids),
                             atol=1e-6)
  soft = np.random.default_rng(4).normal(size=(2, 3, 32)).astype(np.float32)
  x, x_mask = np.concatenate([soft, embedded], 1), np.concatenate([np.ones((2, 3), bool), mask], 1)
  hidden = apply(converted, "encode_embeddings", x, x_mask)
  logits = apply(converted, "decode_logits", hidden, x_mask, decoder_ids)
  with torch.no_grad():
    ref = model(inputs_embeds=torch.from_numpy(x), attention_mask=torch.from_numpy(x_mask).long(),
                decoder_input_ids=torch.from_numpy(decoder_ids))
  enc_err = float(np.abs(hidden - ref.encoder_last_hidden_state.numpy())[x_mask].max())
  err = float(np.abs(logits[..., :VOCAB] - ref.logits.numpy()).max())
  print(f"soft prompts: max |encoder difference| {enc_err:.2e}, max |logit difference| {err:.2e}")
  assert enc_err < TOLERANCE and err < TOLERANCE


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_buckets_match_transformers_at_t5_sizes(bidirectional):
  """32 buckets, max distance 128 (every T5 and FlanT5), relative positions of sequences up to 1024."""
  from transformers.models.t5.modeling_t5 import T5Attention
  relative = np.arange(-1023, 1024)
  reference = T5Attention._relative_position_bucket(torch.from_numpy(relative), bidirectional, 32, 128).numpy()
  np.testing.assert_array_equal(seq2seq_lm.relative_buckets(relative, bidirectional, 32, 128), reference)


def test_tokenizer_rows_are_t5s(imported):
  _, folder, converted = imported("t5")
  spec = converted.data["tokenizer"]
  assert spec == f"hf:{folder / 'tokenizer.json'}?bos=none"
  tok = tokenizers.get_tokenizer(spec)
  # No BOS, </s> (1) ends the text, <pad> (0) = vljax's padding = T5's decoder start: ids unshifted.
  assert tok.id_offset == converted.data["id_offset"] == 0 and tok.eos_id == converted.data["eos_id"] == 1
  np.testing.assert_array_equal(tok.encode(["w5 w7 w9"], 6)[0], [5, 7, 9, 1, 0, 0])
  assert {tok.bos_id, tok.image_id, tok.eoc_id} <= set(converted.model_cfg["lm"]["new_token_ids"])


@pytest.mark.cross_path
def test_cli_workdir_opens_with_vljax_load(imported, tmp_path):
  _, folder, converted = imported("flan_t5")
  out = tmp_path / "flan"
  assert convert_main(["--checkpoint", str(folder), "--workdir", str(out), "--max_len", "16"]) == 0
  cfg = json.loads((out / "config.json").read_text())
  assert cfg["model"]["name"] == "seq2seq_lm" and cfg["model"]["lm"]["mlp"] == "gated-gelu"
  assert cfg["data"]["max_len"] == 16 and cfg["data"]["tokenizer"] == converted.data["tokenizer"]
  loaded = vljax.load(str(out))
  ids, _ = inputs()
  hidden = jax.jit(lambda p, ids: loaded.model.apply({"params": p}, ids, method="encode"))(loaded.params, ids)
  np.testing.assert_allclose(np.asarray(hidden), apply(converted, "encode", ids), atol=1e-6)


def test_parameters_carry_logical_axis_names(imported):
  _, _, converted = imported("flan_t5")
  model = get_model(converted.model_cfg)
  boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), text=jnp.ones((1, 4), jnp.int32)))["params"]
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: hasattr(x, "names"))
  assert leaves and all(hasattr(x, "names") and len(x.names) == len(x.value.shape) for x in leaves)
  decoder = boxed["decoder"]["block_0"]
  assert decoder["cross_attn"]["key"]["kernel"].names == ("embed", "heads", "kv")
  assert decoder["attn"]["relative"]["relative_bias"].names == (None, "heads")
  assert boxed["logits"]["kernel"].names == ("embed", "vocab")
  assert "relative" not in boxed["encoder"]["block_1"]["attn"]  # one table per stack, in its first layer


# ---- bad input -------------------------------------------------------------------------------------------

def copy_with_config(imported, kind, tmp_path, **changes):
  folder = shutil.copytree(imported(kind)[1], tmp_path / "m")
  path = folder / "config.json"
  path.write_text(json.dumps(dict(json.loads(path.read_text()), **changes)))
  return folder


def test_missing_shard_is_named(imported, tmp_path):
  folder = shutil.copytree(imported("flan_t5")[1], tmp_path / "m")
  shard = sorted(folder.glob("model-*.safetensors"))[1]
  shard.unlink()
  with pytest.raises(FileNotFoundError, match=f"shard '{shard.name}' listed in model.safetensors.index.json"):
    hf_t5.import_t5(str(folder))


def test_unsupported_feed_forward_proj_and_model_type(imported, tmp_path):
  folder = copy_with_config(imported, "t5", tmp_path, feed_forward_proj="gated-silu")
  with pytest.raises(ValueError, match=r"feed_forward_proj 'gated-silu' is not supported; valid: \['relu', "
                                       r"'gated-gelu'\]"):
    hf_t5.import_t5(str(folder))
  assert convert_main(["--checkpoint", str(folder), "--workdir", str(tmp_path / "w")]) == 2
  with pytest.raises(ValueError, match=r"model_type 'mt5' is not supported; valid: \['t5'\]"):
    hf_t5.import_t5(str(copy_with_config(imported, "t5", tmp_path / "b", model_type="mt5")))
  with pytest.raises(ValueError, match="decoder_start_token_id=2 is not supported; valid: 0"):
    hf_t5.import_t5(str(copy_with_config(imported, "t5", tmp_path / "c", decoder_start_token_id=2)))


def test_tokenizer_of_another_vocabulary(imported, tmp_path):
  folder = shutil.copytree(imported("t5")[1], tmp_path / "m")
  write_tokenizer(folder, size=VOCAB + 50)
  with pytest.raises(ValueError, match=f"has {VOCAB + 50} tokens but the checkpoint's embedding has {VOCAB} rows"):
    hf_t5.import_t5(str(folder))
  write_tokenizer(folder, pad="w0")  # id 0 is a word: vljax would shift every id
  with pytest.raises(ValueError, match="its id 0 is not <pad>, so vljax would shift every id by 1"):
    hf_t5.import_t5(str(folder))


def test_settings_are_checked():
  s = dict(vocab_size=128, width=32, depth=2, num_heads=2, head_dim=16, mlp_dim=64)
  with pytest.raises(ValueError, match=r"Unknown seq2seq_lm mlp 'swiglu'; valid: \['gated-gelu', 'relu'\]"):
    get_model(dict(name="seq2seq_lm", lm=dict(s, mlp="swiglu")))
  with pytest.raises(ValueError, match=r"seq2seq_lm settings need \['head_dim'\]"):
    get_model(dict(name="seq2seq_lm", lm=dict(s, head_dim=None)))
  with pytest.raises(ValueError, match="scan=True"):
    get_model(dict(name="seq2seq_lm", lm=s, scan=True))
