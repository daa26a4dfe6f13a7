"""Hugging Face T5 / FlanT5 (T5ForConditionalGeneration, a local folder) -> vljax's `seq2seq_lm` model
(vljax/models/seq2seq_lm.py), and a workdir.

  converted = vljax.convert.hf_t5.import_t5("flan-t5-base/")     # config.json + safetensors (+ index)
  vljax.convert.hf_t5.write_workdir(converted, "runs/flan-t5")    # vljax.load / init_from source
  python -m vljax.convert --checkpoint flan-t5-base/ --workdir runs/flan-t5

model_type "t5" with feed_forward_proj "relu" (T5 v1.0) or "gated-gelu" (T5 v1.1, FlanT5). Weights:
model.safetensors, or shards listed by model.safetensors.index.json (hf_lm.read_weights). The vocabulary head
is the token table unless the checkpoint stores an lm_head.weight of its own (v1.1, FlanT5); the decoder
output is scaled by d_model**-0.5 where transformers scales it (config scale_decoder_outputs, else
tie_word_embeddings, default true: T5 v1.0).

Token ids: T5's <pad> is id 0 and is also its decoder_start_token_id; vljax's padding id is 0 too, so ids
stay the checkpoint's (id offset 0) and the decoder starts from id 0 (seq2seq_lm.START_ID). A tokenizer
whose id 0 is not padding would shift every id and is refused. The folder's tokenizer.json is the run's
tokenizer with bos=none ("hf:DIR/tokenizer.json?bos=none"): rows "text </s> <pad>...", as T5's tokenizer
encodes. Rows no checkpoint token fills (ids the tokenizer adds: BOS, "<image>", "<eoc>"; the table's
rounding) start at the mean row and are new_token_ids with rows of their own, as in hf_lm.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from absl import logging

from vljax import config as config_lib
from vljax.convert import check_new_workdir, hf_lm, save_converted
from vljax.convert.hf_lm import Converted, check_shape, read_weights, vocab_table, vocabulary
from vljax.convert.towers import Tensors

MODEL_TYPES = ("t5",)
FEED_FORWARD = ("relu", "gated-gelu")  # config.json's feed_forward_proj -> seq2seq_lm's mlp, the same names
IGNORED = (r"(encoder|decoder)\.embed_tokens\.weight",  # stored copies of shared.weight
           r"decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight")  # unused by T5
DEFAULT_MAX_LEN = 512  # T5's relative positions set no limit; the run's text length (T5 trained on 512)


def is_t5_folder(path: str) -> bool:
  """Whether `path` is a folder whose config.json says model_type "t5"."""
  return hf_lm.is_lm_folder(path, MODEL_TYPES)


def read_config(folder: str) -> dict[str, Any]:
  """config.json of a T5 folder; FileNotFoundError / ValueError naming what is missing or unsupported."""
  config = hf_lm.read_config(folder, MODEL_TYPES, "T5 model folder")
  path = os.path.join(folder, "config.json")
  proj = config.get("feed_forward_proj", "relu")
  if proj not in FEED_FORWARD:
    raise ValueError(f"{path}: feed_forward_proj {proj!r} is not supported; valid: {list(FEED_FORWARD)}")
  for key in ("pad_token_id", "decoder_start_token_id"):
    if config.get(key, 0) != 0:
      raise ValueError(f"{path}: {key}={config[key]!r} is not supported; valid: 0 (T5's <pad>, vljax's padding "
                       "id, from which the decoder starts)")
  return config


def settings(config: dict[str, Any], tied: bool) -> dict[str, Any]:
  """seq2seq_lm's architecture keys of a T5 config.json; tied: the head is the token table."""
  c = config
  return dict(width=c["d_model"], depth=c["num_layers"], decoder_depth=c.get("num_decoder_layers") or c["num_layers"],
              num_heads=c["num_heads"], head_dim=c["d_kv"], mlp_dim=c["d_ff"], mlp=c.get("feed_forward_proj", "relu"),
              relative_buckets=c.get("relative_attention_num_buckets", 32),
              relative_max_distance=c.get("relative_attention_max_distance", 128),
              norm_eps=c.get("layer_norm_epsilon", 1e-6), tie_embeddings=tied,
              scale_output=bool(c.get("scale_decoder_outputs", c.get("tie_word_embeddings", True) is not False)))


def untied_head(t: Tensors) -> bool:
  """Whether the checkpoint's lm_head.weight is a head of its own (not a stored copy of shared.weight)."""
  head = t.arrays.get("lm_head.weight")
  return head is not None and not np.array_equal(head, t.arrays.get("shared.weight"))


# ---- weights ---------------------------------------------------------------------------------------------

def kernel(t: Tensors, name: str) -> np.ndarray:
  """torch Linear weight [out, in] -> kernel [in, out]."""
  return t.take(f"{name}.weight").T


def attention(t: Tensors, prefix: str, s: dict[str, Any], relative: bool) -> dict[str, Any]:
  """T5Attention q/k/v/o (+ its relative_attention_bias) -> SelfAttention / CrossAttention params."""
  n, h, d = s["num_heads"], s["head_dim"], s["width"]
  out = {}
  for part, name in (("query", "q"), ("key", "k"), ("value", "v")):
    w = kernel(t, f"{prefix}.{name}")
    check_shape(w, (d, n * h), f"{prefix}.{name} (as [in, out])")
    out[part] = {"kernel": w.reshape(d, n, h)}
  out["out"] = {"kernel": kernel(t, f"{prefix}.o").reshape(n, h, d)}
  if relative:
    table = t.take(f"{prefix}.relative_attention_bias.weight")
    check_shape(table, (s["relative_buckets"], n), f"{prefix}.relative_attention_bias.weight")
    out["relative"] = {"relative_bias": table}
  return out


def mlp(t: Tensors, prefix: str, kind: str) -> dict[str, Any]:
  """DenseReluDense wi/wo, or the gated wi_0 (gelu: gate), wi_1 (linear: fc1), wo."""
  if kind == "gated-gelu":
    return {"gate": {"kernel": kernel(t, f"{prefix}.wi_0")}, "fc1": {"kernel": kernel(t, f"{prefix}.wi_1")},
            "fc2": {"kernel": kernel(t, f"{prefix}.wo")}}
  return {"fc1": {"kernel": kernel(t, f"{prefix}.wi")}, "fc2": {"kernel": kernel(t, f"{prefix}.wo")}}


def norm(t: Tensors, name: str) -> dict[str, np.ndarray]:
  return {"scale": t.take(f"{name}.weight")}


def stack(t: Tensors, which: str, s: dict[str, Any]) -> dict[str, Any]:
  """encoder.* or decoder.* -> seq2seq_lm's Stack params: layer.0 self-attention, (decoder) layer.1
  cross-attention, the last layer the MLP; final_layer_norm."""
  decoder = which == "decoder"
  depth = t.count(rf"{which}\.block\.(\d+)\.layer\.0\.layer_norm\.weight")
  expected = s["decoder_depth"] if decoder else s["depth"]
  if depth != expected:
    raise ValueError(f"{t.source}: {depth} {which} blocks of weights, but config.json says {expected} layers")
  params = {}
  for i in range(depth):
    p = f"{which}.block.{i}.layer"
    ffn = 2 if decoder else 1
    block = {"ln1": norm(t, f"{p}.0.layer_norm"), "attn": attention(t, f"{p}.0.SelfAttention", s, i == 0),
             "ln2": norm(t, f"{p}.{ffn}.layer_norm"), "mlp": mlp(t, f"{p}.{ffn}.DenseReluDense", s["mlp"])}
    if decoder:
      block.update(ln_cross=norm(t, f"{p}.1.layer_norm"), cross_attn=attention(t, f"{p}.1.EncDecAttention", s, False))
    params[f"block_{i}"] = block
  params["final_norm"] = norm(t, f"{which}.final_layer_norm")
  return params


def to_vljax(t: Tensors, config: dict[str, Any], known: int, vocab_size: int) -> tuple[dict, dict]:
  """(seq2seq_lm settings, params) of a checkpoint: the first `known` token rows kept at their ids."""
  s = settings(config, tied=not untied_head(t))
  shared = t.take("shared.weight")
  check_shape(shared, (config["vocab_size"], s["width"]), "tensor shared.weight")
  params = {"txt": {"embedding": {"embedding": vocab_table(shared, 0, vocab_size, known)}},
            "encoder": stack(t, "encoder", s), "decoder": stack(t, "decoder", s)}
  if s["tie_embeddings"]:
    t.taken.add("lm_head.weight")  # absent, or a stored copy of shared.weight
  else:
    params["logits"] = {"kernel": vocab_table(t.take("lm_head.weight"), 0, vocab_size, known).T}
  t.check_all_taken(IGNORED)
  return s, params


def check_params(params: dict, s: dict[str, Any]) -> None:
  """Every converted tensor's shape against the model config.json implies (ValueError naming the first)."""
  import jax
  from flax import linen as nn
  from vljax.models import get_model

  model = get_model(dict(name="seq2seq_lm", lm=s))
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), text=np.ones((1, 2), np.int32)))
  name = lambda path: "/".join(k.key for k in path)
  expected = {name(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(nn.unbox(abstract["params"]))}
  got = {name(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(params)}
  if set(got) != set(expected):
    raise ValueError(f"converted parameters {sorted(set(got) ^ set(expected))[:4]} are not the model's")
  for key, shape in got.items():
    if shape != expected[key]:
      raise ValueError(f"converted parameter {key} has shape {shape}, but config.json implies {expected[key]}")


# ---- the import ------------------------------------------------------------------------------------------

def folder_tokenizer(folder: str) -> str | None:
  """The folder's tokenizer.json as T5 lays rows out: no BOS, text then </s>."""
  path = os.path.abspath(os.path.join(folder, "tokenizer.json"))
  return f"hf:{path}?bos=none" if os.path.isfile(path) else None


def import_t5(folder: str, tokenizer: str | None = None) -> Converted:
  """Read a Hugging Face T5 / FlanT5 folder and convert it to a seq2seq_lm config and params.

  tokenizer: a vljax tokenizer spec (default: the folder's tokenizer.json, bos=none); its vocabulary must
  fit the checkpoint's rows with <pad> at 0 (ValueError otherwise, before the weights are read).
  """
  config = read_config(folder)
  spec = tokenizer or folder_tokenizer(folder)
  v = vocabulary(folder, config, spec)
  if v.id_offset:
    raise ValueError(f"tokenizer {v.tokenizer!r}: its id 0 is not <pad>, so vljax would shift every id by "
                     f"{v.id_offset}; a T5 vocabulary has <pad> at 0 (its decoder's start token): a tokenizer of "
                     "another model?")
  t = read_weights(folder)
  s, params = to_vljax(t, config, v.known, v.vocab_size)
  s.update(vocab_size=v.vocab_size, new_token_ids=v.new_ids)
  if v.new_ids:  # their own rows, starting as the table's: the mean row
    params["txt"]["new_tokens"] = params["txt"]["embedding"]["embedding"][v.new_ids]
    if "logits" in params:
      params["logits"]["new_tokens"] = params["logits"]["kernel"].T[v.new_ids]
  check_params(params, s)
  model_cfg = dict(name="seq2seq_lm", lm=dict(s, source=os.path.abspath(folder)))
  data = dict(tokenizer=v.tokenizer, max_len=DEFAULT_MAX_LEN, id_offset=0, eos_id=config.get("eos_token_id", 1),
              format="hf_t5", source=os.path.abspath(folder))
  logging.info("converted %s (t5, %s): %d + %d layers, width %d, vocab %d", folder, s["mlp"], s["depth"],
               s["decoder_depth"], s["width"], v.vocab_size)
  return Converted(model_cfg, params, data)


def write_workdir(converted: Converted, workdir: str, max_len: int | None = None) -> str:
  """A vljax workdir of the converted model: config.json (model, tokenizer) and a step-0 Orbax checkpoint,
  which vljax.load(workdir) opens and init_from.workdir reads. Returns config.json's path.
  max_len: the run's data.max_len (default 512)."""
  model_cfg, params, data = converted
  check_new_workdir(workdir)
  cfg = config_lib.base_config()
  cfg.model = model_cfg
  cfg.objectives = {}  # no training objective reads a seq2seq model's outputs yet
  cfg.data.max_len = max_len or data["max_len"]
  if data["tokenizer"]:
    cfg.data.tokenizer = data["tokenizer"]
  return save_converted(workdir, cfg, params, "seq2seq_lm", data)
