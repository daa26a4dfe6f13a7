"""Hugging Face decoder-only language models (a local folder) -> vljax's `lm` model with a pretrained
architecture (vljax/models/causal_lm.py), and a workdir.

  converted = vljax.convert.hf_lm.import_lm("Qwen2-0.5B/")   # config.json + safetensors (+ index)
  vljax.convert.hf_lm.write_workdir(converted, "runs/qwen2")  # vljax.load / init_from source
  python -m vljax.convert --checkpoint Qwen2-0.5B/ --workdir runs/qwen2

Families (MODEL_TYPES): gpt2, opt, llama, mistral, qwen2. Weights: model.safetensors, or shards listed by
model.safetensors.index.json. The folder's tokenizer.json becomes the run's tokenizer ("hf:" backend).

Token ids: vljax id = checkpoint id + the tokenizer's id_offset (1 when the vocabulary's id 0 is not
padding, as in GPT-2 and Llama: vljax keeps 0 for padding). Rows no checkpoint token fills (padding,
appended BOS/EOS, "<image>", "<eoc>", the table's rounding to 128) start at the mean of the checkpoint's
rows, in the token table and in an untied head, as transformers' resize_token_embeddings does: such a
token's logit is the mean logit, never the greedy pick of the untrained model. The tokens the tokenizer
adds (BOS/EOS it lacks, "<image>", "<eoc>") are causal_lm's new_token_ids: their rows are params of their
own (txt/new_tokens, logits/new_tokens), so a run can freeze the imported LM and still train them.

Positions: max_len is the checkpoint's (max_position_embeddings); Mistral's sliding window, when set and
shorter, caps it, so that every sequence the model takes attends exactly as the window would.
"""

from __future__ import annotations

import os
import re
from typing import Any, NamedTuple

import numpy as np
from absl import logging

from vljax import config as config_lib
from vljax.convert import check_new_workdir, files, save_converted
from vljax.convert.towers import Tensors
from vljax.data import tokenizers
from vljax.models.resolve import padded_vocab_size

MODEL_TYPES = ("gpt2", "llama", "mistral", "opt", "qwen2")
INDEX = "model.safetensors.index.json"
# config.json's activation names -> causal_lm's mlp (Llama-family models gate it: swiglu).
GELU_ACTS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
IGNORED = (r".*\.attn\.bias", r".*\.attn\.masked_bias", r".*rotary_emb\.inv_freq")  # buffers, no weights


class Converted(NamedTuple):
  model_cfg: dict  # the `lm` model with `lm` settings (the "model" of a training config)
  params: dict  # float32 numpy arrays in that model's layout
  data: dict  # tokenizer (spec or None), max_len, id_offset, format, source


def is_lm_folder(path: str, model_types: tuple[str, ...] = MODEL_TYPES) -> bool:
  """Whether `path` is a folder whose config.json names one of `model_types` (default: the decoder-only
  families this module imports)."""
  config = os.path.join(path, "config.json")
  return os.path.isdir(path) and os.path.isfile(config) and files.read_json(config).get("model_type") in model_types


def read_config(folder: str, model_types: tuple[str, ...] = MODEL_TYPES, what: str = "language model folder"
                ) -> dict[str, Any]:
  """config.json of a model folder; FileNotFoundError / ValueError naming what is missing or unsupported."""
  files.check_exists(folder, what)
  path = os.path.join(folder, "config.json")
  if not os.path.isdir(folder) or not os.path.isfile(path):
    raise FileNotFoundError(f"{folder!r} is not a Hugging Face model folder: no config.json in it")
  config = files.read_json(path)
  if config.get("model_type") not in model_types:
    raise ValueError(f"{path}: model_type {config.get('model_type')!r} is not supported; valid: {list(model_types)}")
  return config


def read_weights(folder: str) -> Tensors:
  """Every tensor of model.safetensors, or of the shards model.safetensors.index.json lists (float32)."""
  index = os.path.join(folder, INDEX)
  if os.path.isfile(index):
    weight_map = files.read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
      raise ValueError(f"{index}: no weight_map of tensor name -> shard file")
    arrays = {}
    for shard in sorted(set(weight_map.values())):
      path = os.path.join(folder, shard)
      if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder!r}: shard {shard!r} listed in {INDEX} is missing")
      arrays.update(files.read_tensors(path))
    absent = sorted(set(weight_map) - set(arrays))
    if absent:
      raise ValueError(f"{index} lists tensors its shards do not hold, e.g. {absent[:3]}")
    return Tensors(arrays, folder)
  single = os.path.join(folder, "model.safetensors")
  if not os.path.isfile(single):
    raise FileNotFoundError(f"{folder!r} holds neither model.safetensors nor {INDEX}")
  return Tensors(files.read_tensors(single), single)


# ---- architecture settings from config.json --------------------------------------------------------

def settings(config: dict[str, Any]) -> dict[str, Any]:
  """The causal_lm architecture keys of a Hugging Face config (ValueError for options it cannot express)."""
  kind = config["model_type"]
  c = dict(config)
  if kind == "gpt2":
    unsupported(c, scale_attn_by_inverse_layer_idx=True, scale_attn_weights=False, reorder_and_upcast_attn=True,
                add_cross_attention=True)
    return dict(width=c["n_embd"], depth=c["n_layer"], num_heads=c["n_head"], mlp_dim=c.get("n_inner") or
                4 * c["n_embd"], max_len=c["n_positions"], norm="layernorm", norm_eps=c["layer_norm_epsilon"],
                positions="learned", mlp=activation(c["activation_function"]), qkv_bias=True, out_bias=True,
                mlp_bias=True, tie_embeddings=c.get("tie_word_embeddings", True))
  if kind == "opt":
    unsupported(c, do_layer_norm_before=False, _remove_final_layer_norm=True, layer_norm_elementwise_affine=False)
    if c.get("word_embed_proj_dim", c["hidden_size"]) != c["hidden_size"]:
      raise ValueError(f"OPT word_embed_proj_dim {c['word_embed_proj_dim']} != hidden_size {c['hidden_size']} "
                       "(project_in/project_out, OPT-350m) is not supported")
    bias = c.get("enable_bias", True)
    return dict(width=c["hidden_size"], depth=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
                mlp_dim=c["ffn_dim"], max_len=c["max_position_embeddings"], norm="layernorm", norm_eps=1e-5,
                positions="learned", mlp=activation(c["activation_function"]), qkv_bias=bias, out_bias=bias,
                mlp_bias=bias, tie_embeddings=c.get("tie_word_embeddings", True))
  # The Llama family: RMSNorm, RoPE, grouped-query attention, SwiGLU.
  if c.get("hidden_act", "silu") != "silu":
    raise ValueError(f"{kind} hidden_act {c['hidden_act']!r} is not supported; valid: ['silu'] (SwiGLU)")
  rope_params = c.get("rope_parameters") or c.get("rope_scaling") or {}
  rope_type = rope_params.get("rope_type", rope_params.get("type", "default"))
  if rope_type != "default":
    raise ValueError(f"{kind} rope_type {rope_type!r} is not supported; valid: ['default']")
  heads = c["num_attention_heads"]
  max_len = c["max_position_embeddings"]
  window = c.get("sliding_window") if kind == "mistral" or c.get("use_sliding_window") else None
  if window and window < max_len:
    max_len = window
  attention_bias = c.get("attention_bias", False)
  return dict(width=c["hidden_size"], depth=c["num_hidden_layers"], num_heads=heads,
              num_kv_heads=c.get("num_key_value_heads") or heads,
              head_dim=c.get("head_dim") or c["hidden_size"] // heads, mlp_dim=c["intermediate_size"],
              max_len=max_len, norm="rmsnorm", norm_eps=c["rms_norm_eps"], positions="rope",
              rope_theta=float(rope_params.get("rope_theta", c.get("rope_theta", 10_000.0))), mlp="swiglu",
              qkv_bias=kind == "qwen2" or attention_bias, out_bias=kind != "qwen2" and attention_bias,
              mlp_bias=c.get("mlp_bias", False), tie_embeddings=c.get("tie_word_embeddings", False))


def unsupported(config: dict, **values) -> None:
  """ValueError when config has any of these option values, which causal_lm does not express."""
  for key, bad in values.items():
    if key in config and config[key] == bad:
      raise ValueError(f"{config['model_type']} config {key}={bad!r} is not supported")


def activation(name: str) -> str:
  if name not in GELU_ACTS:
    raise ValueError(f"activation_function {name!r} is not supported; valid: {sorted(GELU_ACTS)}")
  return GELU_ACTS[name]


# ---- weights --------------------------------------------------------------------------------------------

def linear(t: Tensors, name: str, bias: bool, conv1d: bool = False) -> dict[str, np.ndarray]:
  """torch Linear (weight [out, in]) or GPT-2's Conv1D (weight [in, out]) -> {kernel [in, out], bias}."""
  w = t.take(f"{name}.weight")
  out = {"kernel": w if conv1d else w.T}
  if bias:
    out["bias"] = t.take(f"{name}.bias")
  return out


def heads(p: dict[str, np.ndarray], n: int, head_dim: int, keep_bias: bool = True) -> dict[str, np.ndarray]:
  """{kernel [D, n*h]} -> the EinsumDense kernel [D, n, h] (and bias [n, h])."""
  out = {"kernel": p["kernel"].reshape(p["kernel"].shape[0], n, head_dim)}
  if keep_bias and "bias" in p:
    out["bias"] = p["bias"].reshape(n, head_dim)
  return out


def out_heads(p: dict[str, np.ndarray], n: int, head_dim: int) -> dict[str, np.ndarray]:
  return dict(p, kernel=p["kernel"].reshape(n, head_dim, p["kernel"].shape[1]))


def norm(t: Tensors, name: str, layernorm: bool) -> dict[str, np.ndarray]:
  return {"scale": t.take(f"{name}.weight"), **({"bias": t.take(f"{name}.bias")} if layernorm else {})}


def block_layout(kind: str, i: int) -> dict[str, str]:
  """Checkpoint names of block i's parts, per family."""
  if kind == "gpt2":
    p = f"transformer.h.{i}"
    return dict(ln1=f"{p}.ln_1", ln2=f"{p}.ln_2", qkv=f"{p}.attn.c_attn", out=f"{p}.attn.c_proj",
                fc1=f"{p}.mlp.c_fc", fc2=f"{p}.mlp.c_proj")
  if kind == "opt":
    p = f"model.decoder.layers.{i}"
    return dict(ln1=f"{p}.self_attn_layer_norm", ln2=f"{p}.final_layer_norm", q=f"{p}.self_attn.q_proj",
                k=f"{p}.self_attn.k_proj", v=f"{p}.self_attn.v_proj", out=f"{p}.self_attn.out_proj",
                fc1=f"{p}.fc1", fc2=f"{p}.fc2")
  p = f"model.layers.{i}"
  return dict(ln1=f"{p}.input_layernorm", ln2=f"{p}.post_attention_layernorm", q=f"{p}.self_attn.q_proj",
              k=f"{p}.self_attn.k_proj", v=f"{p}.self_attn.v_proj", out=f"{p}.self_attn.o_proj",
              fc1=f"{p}.mlp.up_proj", gate=f"{p}.mlp.gate_proj", fc2=f"{p}.mlp.down_proj")


def convert_block(t: Tensors, kind: str, i: int, s: dict[str, Any]) -> dict[str, Any]:
  names, ln = block_layout(kind, i), s["norm"] == "layernorm"
  h, n, nkv = s["head_dim"], s["num_heads"], s["num_kv_heads"]
  key_bias = s["qkv_bias"] and s["positions"] == "rope"  # learned positions: softmax cancels the key bias
  if kind == "gpt2":  # one Conv1D for q, k, v
    qkv = linear(t, names["qkv"], True, conv1d=True)
    q, k, v = ({key: np.split(a, 3, axis=-1)[j] for key, a in qkv.items()} for j in range(3))
  else:
    q, k, v = (linear(t, names[x], s["qkv_bias"]) for x in "qkv")
  d = s["width"]
  for part, p, rows in (("query", q, n), ("key", k, nkv), ("value", v, nkv)):
    check_shape(p["kernel"], (d, rows * h), f"block {i}'s {part} projection (as [in, out])")
  attn = {"query": heads(q, n, h), "key": heads(k, nkv, h, key_bias), "value": heads(v, nkv, h),
          "out": out_heads(linear(t, names["out"], s["out_bias"], conv1d=kind == "gpt2"), n, h)}
  mlp = {"fc1": linear(t, names["fc1"], s["mlp_bias"], conv1d=kind == "gpt2"),
         "fc2": linear(t, names["fc2"], s["mlp_bias"], conv1d=kind == "gpt2")}
  if s["mlp"] == "swiglu":
    mlp["gate"] = linear(t, names["gate"], s["mlp_bias"])
  return {"ln1": norm(t, names["ln1"], ln), "attn": attn, "ln2": norm(t, names["ln2"], ln), "mlp": mlp}


GLOBALS = {  # family -> (token table, position table or None, final norm, untied head)
    "gpt2": ("transformer.wte", "transformer.wpe", "transformer.ln_f", "lm_head"),
    "opt": ("model.decoder.embed_tokens", "model.decoder.embed_positions", "model.decoder.final_layer_norm",
            "lm_head"),
    "llama": ("model.embed_tokens", None, "model.norm", "lm_head"),
}
OPT_POSITION_OFFSET = 2  # OPT's position table has 2 rows before position 0


def vocab_table(rows: np.ndarray, id_offset: int, size: int, known: int) -> np.ndarray:
  """[size, D]: checkpoint row i at id_offset + i for the `known` rows the tokenizer reaches; every other row
  the mean of those (see the module docstring)."""
  out = np.broadcast_to(rows[:known].mean(axis=0), (size, rows.shape[1])).copy()
  out[id_offset:id_offset + known] = rows[:known]
  return out


def to_vljax(t: Tensors, config: dict[str, Any], id_offset: int, known: int, vocab_size: int
             ) -> tuple[dict, dict]:
  """(causal_lm settings, params) of a checkpoint: token ids shifted by id_offset, the first `known` rows kept."""
  kind = config["model_type"]
  s = settings(config)
  s.setdefault("num_kv_heads", s["num_heads"])
  s.setdefault("head_dim", s["width"] // s["num_heads"])
  tokens, positions, final, head = GLOBALS.get(kind, GLOBALS["llama"])
  first_norm = block_layout(kind, "999")["ln1"] + ".weight"  # "999": where the block number goes
  depth = t.count(re.escape(first_norm).replace("999", r"(\d+)"))
  if depth != s["depth"]:
    raise ValueError(f"{t.source}: {depth} blocks of weights, but config.json says {s['depth']} layers")
  embedding = t.take(f"{tokens}.weight")
  check_shape(embedding, (config["vocab_size"], s["width"]), f"tensor {tokens}.weight")
  txt = {"embedding": {"embedding": vocab_table(embedding, id_offset, vocab_size, known)}}
  if positions:
    table = t.take(f"{positions}.weight")[OPT_POSITION_OFFSET if kind == "opt" else 0:]
    check_shape(table, (s["max_len"], s["width"]), f"tensor {positions}.weight")
    txt["posemb"] = {"pos_embedding": table}
  lm = {f"block_{i}": convert_block(t, kind, i, s) for i in range(depth)}
  lm["encoder_norm"] = norm(t, final, s["norm"] == "layernorm")
  params = {"txt": txt, "lm": lm}
  if s["tie_embeddings"]:
    t.taken.add(f"{head}.weight")  # some checkpoints store the tied copy
  else:
    params["logits"] = {"kernel": vocab_table(t.take(f"{head}.weight"), id_offset, vocab_size, known).T}
  t.check_all_taken(IGNORED)
  return s, params


def check_shape(a: np.ndarray, expected: tuple[int, ...], name: str) -> None:
  if tuple(a.shape) != tuple(expected):
    raise ValueError(f"{name} has shape {tuple(a.shape)}, but config.json implies {tuple(expected)}")


def check_params(params: dict, s: dict[str, Any]) -> None:
  """Every block tensor's shape against what config.json implies (ValueError naming the first that differs)."""
  import jax
  from flax import linen as nn
  from vljax.models import get_model

  model = get_model(dict(name="lm", lm=s))
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), text=np.zeros((1, 1), np.int32)))
  name = lambda path: "/".join(k.key for k in path)
  expected = {name(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(nn.unbox(abstract["params"]))}
  for k, v in jax.tree_util.tree_leaves_with_path(params):
    if name(k) not in expected:
      raise ValueError(f"converted parameter {name(k)} is not one of the model's")
    check_shape(v, expected[name(k)], f"converted parameter {name(k)}")


# ---- the import ----------------------------------------------------------------------------------------

class Vocabulary(NamedTuple):
  """How the checkpoint's token rows sit in vljax's table."""
  tokenizer: str | None  # the vljax tokenizer spec
  id_offset: int  # vljax id - checkpoint id
  known: int  # checkpoint rows the tokenizer reaches (the first `known`)
  vocab_size: int  # rows of vljax's table
  new_ids: list[int]  # ids the tokenizer adds (BOS/EOS it lacks, "<image>", "<eoc>"): causal_lm's new_token_ids


def vocabulary(folder: str, config: dict[str, Any], tokenizer: str | None = None) -> Vocabulary:
  """The vocabulary layout of a folder's LM with `tokenizer` (default: the folder's tokenizer.json)."""
  rows = config["vocab_size"]
  spec = tokenizer or folder_tokenizer(folder)
  if not spec:
    logging.warning("%s: no tokenizer.json; the converted ids are the checkpoint's", folder)
    return Vocabulary(None, 0, rows, padded_vocab_size(rows + len(tokenizers.SPECIAL_TOKENS)), [])
  tok = tokenizers.get_tokenizer(spec)
  known = backend_size(tok, spec)
  if known > rows:
    raise ValueError(f"tokenizer {spec!r} has {known} tokens but the checkpoint's embedding has {rows} rows "
                     "(vocab_size in config.json): a tokenizer of another model?")
  return Vocabulary(spec, tok.id_offset, known, padded_vocab_size(max(tok.vocab_size, tok.id_offset + rows)),
                    list(range(tok.id_offset + known, tok.vocab_size)))


def lm_settings(folder: str, tokenizer: str | None = None) -> dict[str, Any]:
  """The `lm` settings (vljax/models/causal_lm.py) that import_lm(folder, tokenizer) gives, from config.json and
  the tokenizer alone (no weights read): what a model given `lm="hf:DIR"` builds its language model from."""
  config = read_config(folder)
  v = vocabulary(folder, config, tokenizer)
  s = settings(config)
  return dict(s, vocab_size=v.vocab_size, new_token_ids=v.new_ids, source=os.path.abspath(folder))


def import_lm(folder: str, tokenizer: str | None = None) -> Converted:
  """Read a Hugging Face decoder-only LM folder and convert it to a causal_lm config and params.

  tokenizer: a vljax tokenizer spec (default: the folder's tokenizer.json through the "hf:" backend; without
  one, ids are the checkpoint's own and no rows are added for "<image>" and "<eoc>").
  """
  config = read_config(folder)
  t = read_weights(folder)
  v = vocabulary(folder, config, tokenizer)
  s, params = to_vljax(t, config, v.id_offset, v.known, v.vocab_size)
  s.update(vocab_size=v.vocab_size, new_token_ids=v.new_ids)
  if v.new_ids:  # their own rows (trainable under a frozen LM), starting as the table's: the mean row
    params["txt"]["new_tokens"] = params["txt"]["embedding"]["embedding"][v.new_ids]
    if "logits" in params:
      params["logits"]["new_tokens"] = params["logits"]["kernel"].T[v.new_ids]
  check_params(params, s)
  model_cfg = dict(name="lm", lm=dict(s, source=os.path.abspath(folder)))
  data = dict(tokenizer=v.tokenizer, max_len=s["max_len"], id_offset=v.id_offset,
              format=f"hf_lm:{config['model_type']}", source=os.path.abspath(folder))
  logging.info("converted %s (%s): %d layers, width %d, vocab %d", folder, config["model_type"], s["depth"],
               s["width"], v.vocab_size)
  return Converted(model_cfg, params, data)


def folder_tokenizer(folder: str) -> str | None:
  path = os.path.abspath(os.path.join(folder, "tokenizer.json"))
  return f"hf:{path}" if os.path.isfile(path) else None


def backend_size(tok: tokenizers.Tokenizer, spec: str) -> int:
  """Tokens of the tokenizer's own vocabulary (before vljax's appended BOS/EOS and special tokens)."""
  size = getattr(getattr(tok, "_map", None), "size", None)
  if size is None:
    raise ValueError(f"tokenizer {spec!r}: only hf: and sentencepiece: tokenizers can go with an imported LM")
  return size


def write_workdir(converted: Converted, workdir: str, max_len: int | None = None) -> str:
  """A vljax workdir of the converted LM: config.json (model, tokenizer, captioning objective) and a step-0
  Orbax checkpoint, which vljax.load(workdir) opens and init_from.workdir reads. Returns config.json's path.
  max_len: the run's data.max_len (default min(512, the model's))."""
  model_cfg, params, data = converted
  check_new_workdir(workdir)
  cfg = config_lib.base_config()
  cfg.model = model_cfg
  cfg.objectives = {"captioning": 1.0}
  cfg.data.max_len = min(max_len or 512, data["max_len"])
  if data["tokenizer"]:
    cfg.data.tokenizer = data["tokenizer"]
  return save_converted(workdir, cfg, params, "lm", data)
