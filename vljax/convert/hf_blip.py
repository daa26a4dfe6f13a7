"""Hugging Face BLIP (config.json + model.safetensors) -> vljax's composable model.

  BlipForImageTextRetrieval     image tower, text tower pooled at [CLS] with text_proj, contrastive head
                                (ITC), fusion head (share="none") with its ITM head
  BlipForConditionalGeneration  image tower and caption decoder

Image tower: a pre-LN ViT (conv with bias, [CLS] with a position row, post LayerNorm on every token) whose
output tokens keep [CLS] (ViT cls_in_tokens): BLIP's image embeddings, the memory of every cross-attention.
Text: BERT (post-LN blocks after an embedding LayerNorm, no final one: norm_position="post", exact GELU).

Weights copied, not shared: BLIP's ITC text encoder and its ITM encoder are one BERT, run without and with
cross-attention. vljax's fusion head shares with the decoder (share="blip") but not with the text tower, so
the text tower `txt` holds the embeddings, self-attention and MLPs, and the fusion head (`fusion_embed`,
`fusion_encoder`) a copy of them with the cross-attention; fine-tuning then trains the two apart.

First tokens: vljax rows start with the tokenizer's BOS, [CLS] for BLIP's BERT tokenizer.
- ITM: transformers' BlipForImageTextRetrieval reads the ids as given ([CLS] first), so the fusion head's
  `enc_token` (what vljax puts in place of the first token) is [CLS]'s embedding row. (BLIP's own training
  put [ENC] there; transformers' inference, matched here, does not.)
- Captions: BLIP's decoder starts from [DEC] (text_config.bos_token_id). The decoder's input row of the
  tokenizer's BOS ([CLS]) holds [DEC]'s embedding, so vljax's rows and its decoding from BOS feed BLIP's
  decoder what transformers' `generate` does; its output row (the vocabulary head) stays [CLS]'s.
  The head is BERT's: `head_transform` (dense + GELU + LayerNorm), then the vocabulary projection (the
  word embeddings, tied in BLIP, copied) with its bias; vocabulary columns BLIP lacks ("<image>", "<eoc>",
  padding to a multiple of 128) hold the mean column and bias (as hf_lm's), so greedy decoding never picks
  them and label smoothing stays finite.
No `temp` in transformers' checkpoints: the contrastive head's logit scale is 1 / temp where the file has
one, else BLIP's initial 1 / 0.07. Text positions: the first DEFAULT_MAX_LEN (BLIP trains on 35-40 tokens;
--max_len for more, up to the checkpoint's 512).

Not supported (an error names them): BlipModel, BlipForQuestionAnswering, relative position embeddings.
A folder with vocab.txt and no tokenizer.json: write one with
`transformers.BertTokenizerFast.from_pretrained(DIR).save_pretrained(DIR)`, or pass --tokenizer hf:FILE.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

import numpy as np
from absl import logging

from vljax.convert import files, towers
from vljax.convert.target import (IMAGE_NORMALIZATIONS, Target, activations, contrastive_model, image_positions,
                                  logit_config, text_config, text_tables, vit_config)
from vljax.convert.towers import Tensors

RETRIEVAL, CAPTIONING = "BlipForImageTextRetrieval", "BlipForConditionalGeneration"
# architecture -> the prefix of its BERT's tensors
ARCHITECTURES = {RETRIEVAL: "text_encoder", CAPTIONING: "text_decoder.bert"}
# transformers' BlipVisionConfig / BlipTextConfig defaults, for keys a config.json leaves out.
VISION_DEFAULTS = dict(num_attention_heads=12, hidden_act="gelu", layer_norm_eps=1e-5)
TEXT_DEFAULTS = dict(num_attention_heads=8, hidden_act="gelu", layer_norm_eps=1e-12, bos_token_id=30522,
                     pad_token_id=0, sep_token_id=102)
BLIP_NORMALIZATION = IMAGE_NORMALIZATIONS["clip"]  # BlipImageProcessor's default mean/std: OpenAI CLIP's
DEFAULT_MAX_LEN = 40
BLIP_TEMPERATURE = 0.07  # BLIP's initial ITC temperature
# bert-base-uncased's [CLS] and [MASK] ids (BLIP's tokenizer), where no tokenizer says otherwise
BERT_CLS, BERT_MASK = 101, 103
# position_ids: buffers of older transformers versions; a text_encoder pooler: BLIP exports that kept BERT's,
# which transformers' BlipForImageTextRetrieval does not build either.
IGNORED = (r".*position_ids", r"text_encoder\.pooler\..*")
OBJECTIVES = {RETRIEVAL: {"softmax_contrastive": 1.0, "itm": 1.0}, CAPTIONING: {"captioning": 1.0}}


def read(path: str) -> tuple[Tensors, dict]:
  """(tensors, spec) of a Hugging Face BLIP folder (or its weights file with config.json beside it)."""
  config_path, weights = files.hf_folder_files(path)
  config = files.read_json(config_path)
  if config.get("model_type") != "blip":
    raise ValueError(f"{config_path}: model_type {config.get('model_type')!r} is not 'blip'")
  tensors = Tensors(files.read_tensors(weights), weights)
  architecture = _architecture(config, tensors, config_path)
  text = dict(TEXT_DEFAULTS, **config.get("text_config", {}))
  if text.get("position_embedding_type", "absolute") != "absolute":
    raise ValueError(f"{config_path}: text_config.position_embedding_type {text['position_embedding_type']!r} is "
                     "not supported; valid: 'absolute'")
  spec = dict(vision=towers.hf_tower_spec(config.get("vision_config", {}), VISION_DEFAULTS),
              text=dict(towers.hf_tower_spec(text, TEXT_DEFAULTS),
                        **{k: text[k] for k in ("bos_token_id", "pad_token_id", "sep_token_id")}),
              normalization=files.hf_image_normalization(os.path.dirname(config_path), BLIP_NORMALIZATION),
              architecture=architecture)
  return tensors, spec


def _architecture(config: dict, t: Tensors, config_path: str) -> str:
  """Which BLIP head the folder holds: config.json's `architectures`, checked against the tensor names."""
  named = config.get("architectures") or []
  if named and named[0] not in ARCHITECTURES:
    raise ValueError(f"{config_path}: architecture {named[0]!r} is not supported; valid: {sorted(ARCHITECTURES)}")
  found = [a for a, prefix in ARCHITECTURES.items() if any(n.startswith(prefix + ".") for n in t.arrays)]
  if named and named[0] not in found:
    raise ValueError(f"{t.source}: config.json names {named[0]!r} but no tensor starts with "
                     f"{ARCHITECTURES[named[0]]!r}")
  if len(found) != 1:
    raise ValueError(f"{t.source}: cannot tell the BLIP model: its tensors fit {found or 'none'} of "
                     f"{sorted(ARCHITECTURES)} (text tensors under {sorted(ARCHITECTURES.values())})")
  return found[0]


def to_vljax(t: Tensors, spec: dict, target: Target) -> tuple[dict, dict, dict]:
  """(model config, params, data settings) of HF-named BLIP tensors."""
  if target.id_offset:
    raise ValueError(f"BLIP's BERT ids keep 0 for [PAD]; the tokenizer shifts ids by {target.id_offset}: give "
                     "the folder's tokenizer.json (hf:DIR/tokenizer.json)")
  v_act, x_act = activations(spec, target)
  img, image_cfg, image_size = vision_tower(t, spec, target, v_act)
  prefix = ARCHITECTURES[spec["architecture"]]
  positions = t.arrays.get(f"{prefix}.embeddings.position_embeddings.weight")
  if positions is not None and target.max_len is None:
    target = dataclasses.replace(target, max_len=min(DEFAULT_MAX_LEN, positions.shape[0]))
  bert, sizes = bert_encoder(t, prefix, spec["text"]["num_heads"], target)
  if sizes["memory_width"] != image_cfg["width"]:
    raise ValueError(f"{t.source}: the text cross-attention reads {sizes['memory_width']}-wide image embeddings, "
                     f"but the image tower is {image_cfg['width']} wide")
  tower_keys = dict(width=sizes["width"], depth=sizes["depth"], mlp_dim=sizes["mlp_dim"],
                    num_heads=spec["text"]["num_heads"], activation=x_act, norm_eps=spec["text"]["norm_eps"],
                    norm_position="post")
  build = _retrieval if spec["architecture"] == RETRIEVAL else _captioning
  model_cfg, params = build(t, spec, target, bert, tower_keys)
  params["img"] = img
  model_cfg["image"] = image_cfg
  t.check_all_taken(IGNORED)
  data = dict(image_size=image_size, max_len=bert["posemb"].shape[0], objectives=OBJECTIVES[spec["architecture"]])
  return model_cfg, params, data


def vision_tower(t: Tensors, spec: dict, target: Target, activation: str) -> tuple[dict, dict, int]:
  """(params, ViT config, image size) of BLIP's image tower."""
  heads = spec["vision"]["num_heads"]
  weight = t.take("vision_model.embeddings.patch_embedding.weight")
  patch = weight.shape[-1]
  posemb, image_size = image_positions(t.take("vision_model.embeddings.position_embedding")[0], patch, 1, target,
                                       "BLIP image position embedding")
  prefix = "vision_model.encoder.layers"
  depth = t.count(re.escape(prefix) + r"\.(\d+)\..*")
  encoder = {f"block_{i}": vision_block(t, f"{prefix}.{i}", heads) for i in range(depth)}
  encoder["encoder_norm"] = towers.layer_norm(t, "vision_model.post_layernorm")
  img = {"embedding": towers.patch_embedding(weight, t.take("vision_model.embeddings.patch_embedding.bias"),
                                             spec["normalization"], target.normalization),
         "cls": t.take("vision_model.embeddings.class_embedding").reshape(-1),
         "posemb": {"pos_embedding": posemb},
         "encoder": encoder}
  width, mlp_dim = img["cls"].shape[0], encoder["block_0"]["mlp"]["fc1"]["kernel"].shape[1]
  cfg = vit_config(width, depth, mlp_dim, heads, patch, pool="tok", cls_posemb=True, cls_in_tokens=True,
                   activation=activation, norm_eps=spec["vision"]["norm_eps"])
  return img, cfg, image_size


def vision_block(t: Tensors, prefix: str, heads: int) -> dict:
  """A pre-LN BlipEncoderLayer: the fused qkv projection ([3 * width, width], q/k/v stacked) and `projection`."""
  q_w, k_w, v_w = np.split(t.take(f"{prefix}.self_attn.qkv.weight"), 3)
  q_b, _, v_b = np.split(t.take(f"{prefix}.self_attn.qkv.bias"), 3)
  attn = towers.attention(q_w, q_b, k_w, v_w, v_b, t.take(f"{prefix}.self_attn.projection.weight"),
                          t.take(f"{prefix}.self_attn.projection.bias"), heads)
  return {"ln1": towers.layer_norm(t, f"{prefix}.layer_norm1"), "attn": attn,
          "ln2": towers.layer_norm(t, f"{prefix}.layer_norm2"),
          "mlp": {"fc1": towers.linear(t, f"{prefix}.mlp.fc1"), "fc2": towers.linear(t, f"{prefix}.mlp.fc2")}}


def bert_attention(t: Tensors, prefix: str, heads: int) -> dict:
  """BERT's self.query/key/value + output.dense under `prefix` (the key bias read and dropped)."""
  w = lambda name: t.take(f"{prefix}.{name}.weight")
  b = lambda name: t.take(f"{prefix}.{name}.bias")
  b("self.key")
  return towers.attention(w("self.query"), b("self.query"), w("self.key"), w("self.value"), b("self.value"),
                          w("output.dense"), b("output.dense"), heads)


def bert_encoder(t: Tensors, prefix: str, heads: int, target: Target) -> tuple[dict, dict]:
  """({"embedding", "posemb", "encoder" (with cross-attention), "word_embeddings"}, sizes) of a BlipTextModel:
  the embedding LayerNorm is the post-LN Transformer's `encoder_norm`."""
  emb = f"{prefix}.embeddings"
  words = t.take(f"{emb}.word_embeddings.weight")
  table, positions = text_tables(words, t.take(f"{emb}.position_embeddings.weight"), target)
  layer = f"{prefix}.encoder.layer"
  depth = t.count(re.escape(layer) + r"\.(\d+)\..*")
  encoder = {"encoder_norm": towers.layer_norm(t, f"{emb}.LayerNorm")}
  for i in range(depth):
    p = f"{layer}.{i}"
    if f"{p}.crossattention.self.query.weight" not in t.arrays:
      raise ValueError(f"{t.source}: no tensor {p}.crossattention.self.query.weight; BLIP's text transformers "
                       "cross-attend to the image in every layer (text_config.is_decoder=True)")
    encoder[f"block_{i}"] = {
        "attn": bert_attention(t, f"{p}.attention", heads),
        "ln1": towers.layer_norm(t, f"{p}.attention.output.LayerNorm"),
        "cross_attn": bert_attention(t, f"{p}.crossattention", heads),
        "ln_cross": towers.layer_norm(t, f"{p}.crossattention.output.LayerNorm"),
        "mlp": {"fc1": towers.linear(t, f"{p}.intermediate.dense"), "fc2": towers.linear(t, f"{p}.output.dense")},
        "ln2": towers.layer_norm(t, f"{p}.output.LayerNorm")}
  block = encoder["block_0"]
  sizes = dict(width=words.shape[1], depth=depth, mlp_dim=block["mlp"]["fc1"]["kernel"].shape[1],
               memory_width=block["cross_attn"]["key"]["kernel"].shape[0], vocab=words.shape[0])
  return {"embedding": table, "posemb": positions, "encoder": encoder, "word_embeddings": words}, sizes


def without_cross_attention(encoder: dict) -> dict:
  return {name: {k: v for k, v in p.items() if k not in ("cross_attn", "ln_cross")} if name.startswith("block_")
          else p for name, p in encoder.items()}


def special_id(target: Target, token: str, default: int) -> int:
  """The tokenizer's id of a special token ("[CLS]", "[MASK]"), `default` (bert-base-uncased's) without one."""
  tok = target.tokenizer
  if tok is None:
    logging.warning("no tokenizer: BLIP's %s is taken to be id %d (bert-base-uncased)", token, default)
    return default
  if token == "[CLS]":
    return tok.bos_id
  ids = tok.content_ids(token)
  if len(ids) != 1:
    raise ValueError(f"the tokenizer has no single id for BLIP's {token} (got {ids}); give BLIP's own "
                     "tokenizer.json")
  return ids[0]


def _retrieval(t: Tensors, spec: dict, target: Target, bert: dict, tower_keys: dict) -> tuple[dict, dict]:
  """Text tower ([CLS]-pooled, text_proj), contrastive head (vision_proj), fusion head (copied BERT, itm_head)."""
  table, positions = bert["embedding"], bert["posemb"]
  text_cfg = text_config(**tower_keys, vocab_size=table.shape[0], max_len=positions.shape[0], causal=False,
                         pool="first", pad_id=spec["text"]["pad_token_id"])
  fusion = dict(share="none", variant=text_cfg["variant"], **tower_keys)
  embed = {"embedding": {"embedding": table}, "posemb": {"pos_embedding": positions}}
  log_scale = math.log(1 / BLIP_TEMPERATURE)
  if "temp" in t.arrays:  # LAVIS / BLIP state dicts renamed to transformers' names keep it
    log_scale = -math.log(float(t.take("temp").reshape(())))
  img_proj, txt_proj = towers.linear(t, "vision_proj"), towers.linear(t, "text_proj")
  params = {"img_proj": img_proj, "txt": dict(embed, encoder=without_cross_attention(bert["encoder"])),
            "txt_proj": txt_proj, "t": np.float32(log_scale),
            "fusion_embed": embed, "fusion_encoder": bert["encoder"],
            "enc_token": table[special_id(target, "[CLS]", BERT_CLS)],
            "mlm_mask_token": table[special_id(target, "[MASK]", BERT_MASK)],
            "itm_head": towers.linear(t, "itm_head")}
  embed_dim = img_proj["kernel"].shape[1]
  if txt_proj["kernel"].shape[1] != embed_dim:
    raise ValueError(f"{t.source}: vision_proj gives {embed_dim} dims but text_proj {txt_proj['kernel'].shape[1]}")
  model_cfg = contrastive_model({}, text_cfg, embed_dim, dict(image=(True, True), text=(True, True)),
                                **logit_config(log_scale))
  model_cfg["fusion"] = fusion
  return model_cfg, params


def _captioning(t: Tensors, spec: dict, target: Target, bert: dict, tower_keys: dict) -> tuple[dict, dict]:
  """The caption decoder: BERT with cross-attention, BERT's LM head, [DEC]'s embedding in the BOS row."""
  table, words = bert["embedding"].copy(), bert["word_embeddings"]
  s = spec["text"]
  table[special_id(target, "[CLS]", BERT_CLS)] = words[s["bos_token_id"]]
  tok = target.tokenizer
  if tok is not None and (tok.eos_id, tok.pad_id) != (s["sep_token_id"], s["pad_token_id"]):
    raise ValueError(f"the tokenizer's EOS/pad ids {(tok.eos_id, tok.pad_id)} are not BLIP's [SEP]/[PAD] "
                     f"{(s['sep_token_id'], s['pad_token_id'])} (text_config.sep_token_id, pad_token_id): give "
                     "BLIP's own tokenizer.json")
  head = "text_decoder.cls.predictions"
  kernel = t.arrays.get(f"{head}.decoder.weight", words)  # tied to the word embeddings: often not stored
  # transformers' forward adds decoder.bias; `bias` is its tied twin, the one stored when only one is
  bias_names = [n for n in (f"{head}.decoder.bias", f"{head}.bias") if n in t.arrays]
  if not bias_names:
    raise ValueError(f"{t.source}: no tensor {head}.bias or {head}.decoder.bias (the vocabulary bias)")
  bias = t.take(bias_names[0])
  for name in bias_names[1:] + ([f"{head}.decoder.weight"] if f"{head}.decoder.weight" in t.arrays else []):
    t.take(name)
  rows, vocab = table.shape[0], words.shape[0]
  if kernel.shape != words.shape or bias.shape != (vocab,):
    raise ValueError(f"{t.source}: the vocabulary head is {kernel.shape} with bias {bias.shape}; the word "
                     f"embeddings are {words.shape}")
  from vljax.convert.hf_lm import vocab_table  # lazy: hf_lm imports vljax.convert, which imports this module
  logits = {"kernel": vocab_table(kernel, 0, rows, vocab).T, "bias": vocab_table(bias[:, None], 0, rows, vocab)[:, 0]}
  transform = {"dense": towers.linear(t, f"{head}.transform.dense"),
               "norm": towers.layer_norm(t, f"{head}.transform.LayerNorm")}
  decoder = dict(text_config(**tower_keys, vocab_size=rows, max_len=bert["posemb"].shape[0],
                             pad_id=s["pad_token_id"]), head_transform=True)
  for key in ("causal", "pool"):  # fixed by the decoder's role
    decoder.pop(key)
  params = {"dec_embed": {"embedding": {"embedding": table}, "posemb": {"pos_embedding": bert["posemb"]}},
            "dec": {"decoder": bert["encoder"], "head_transform": transform, "logits": logits}}
  return dict(name="composable", decoder=decoder), params
