"""Reference models for the weight-import tests: random Hugging Face transformers CLIP / SigLIP
(PyTorch, CPU, nothing downloaded), their checkpoints in every format vljax imports, and their outputs.

The OpenAI and big_vision layouts are written by the inverse of transformers' published conversion
scripts. Token ids: HF id = vljax id - id_offset (1 for CLIP). Import after
`pytest.importorskip("torch")` and `pytest.importorskip("transformers")`.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from vljax.data import images as images_lib
from vljax.models import get_model

# Heads of 64 dims: OpenAI state dicts do not store the head count, the converter takes width / 64.
SMALL_TOWER = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2)
SMALL_VOCAB, SMALL_LEN, SMALL_IMAGE = 100, 16, 32
TOLERANCE = 1e-4  # max relative error of an embedding (|a - b| / |b|), float32


# ---- random Hugging Face models --------------------------------------------------------------

def random_model(cls, config, log_scale: float, bias: float | None = None):
  """cls(config) with random weights: N(0, 0.02) everywhere (biases, key biases and embeddings included),
  LayerNorm scales around 1, so that a mapping error anywhere shows up in the outputs. transformers'
  own init of a 200M-param model takes ~20 s on CPU; skipping it for this takes ~3 s."""
  from transformers.initialization import no_init_weights
  with no_init_weights():
    model = cls(config)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(0.02 * torch.randn_like(p))
    for m in model.modules():
      if isinstance(m, torch.nn.LayerNorm):
        m.weight.add_(1.0)
    model.logit_scale.fill_(log_scale)
    if bias is not None:
      model.logit_bias.fill_(bias)
  return model.eval()


def hf_clip(small: bool):
  torch.manual_seed(0)
  if small:
    config = transformers.CLIPConfig(
        text_config=dict(SMALL_TOWER, vocab_size=SMALL_VOCAB, max_position_embeddings=SMALL_LEN,
                         bos_token_id=SMALL_VOCAB - 2, eos_token_id=SMALL_VOCAB - 1),
        vision_config=dict(SMALL_TOWER, image_size=SMALL_IMAGE, patch_size=8), projection_dim=48)
  else:  # transformers' defaults: ViT-B/32 at 224, text 512 wide, 12 layers, 77 positions
    config = transformers.CLIPConfig()
  return random_model(transformers.CLIPModel, config, log_scale=np.log(1 / 0.07))


def hf_siglip(small: bool):
  torch.manual_seed(1)
  if small:
    config = transformers.SiglipConfig(
        text_config=dict(SMALL_TOWER, vocab_size=SMALL_VOCAB, max_position_embeddings=SMALL_LEN, pad_token_id=1,
                         bos_token_id=2, eos_token_id=1),
        vision_config=dict(SMALL_TOWER, image_size=SMALL_IMAGE, patch_size=8))
  else:  # transformers' defaults: B/16 at 224, text 768 wide, 64 positions
    config = transformers.SiglipConfig()
  return random_model(transformers.SiglipModel, config, log_scale=np.log(10.0), bias=-10.0)


def state_dict(model) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


# ---- the other formats, by the inverse of transformers' conversion scripts ---------------------

def openai_layout(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """HF CLIPModel state dict -> OpenAI CLIP's (inverse of convert_clip_original_pytorch_to_hf)."""
  out = {"logit_scale": sd["logit_scale"], "visual.proj": sd["visual_projection.weight"].T,
         "text_projection": sd["text_projection.weight"].T,
         "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
         "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
         "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
         "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
         "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
         # buffers OpenAI's TorchScript archives carry along
         "input_resolution": np.array(224), "context_length": np.array(77), "vocab_size": np.array(49408)}
  for hf, oa in (("vision_model.pre_layrnorm", "visual.ln_pre"), ("vision_model.post_layernorm", "visual.ln_post"),
                 ("text_model.final_layer_norm", "ln_final")):
    out[f"{oa}.weight"], out[f"{oa}.bias"] = sd[f"{hf}.weight"], sd[f"{hf}.bias"]
  for tower, prefix in (("vision_model", "visual.transformer"), ("text_model", "transformer")):
    i = 0
    while f"{tower}.encoder.layers.{i}.layer_norm1.weight" in sd:
      hf, oa = f"{tower}.encoder.layers.{i}", f"{prefix}.resblocks.{i}"
      for kind in ("weight", "bias"):
        out[f"{oa}.attn.in_proj_{kind}"] = np.concatenate([sd[f"{hf}.self_attn.{p}_proj.{kind}"] for p in "qkv"])
        for h, o in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                     ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
          out[f"{oa}.{o}.{kind}"] = sd[f"{hf}.{h}.{kind}"]
      i += 1
  return out


def big_vision_layout(sd: dict[str, np.ndarray], heads: int, scanned: bool = False) -> dict[str, np.ndarray]:
  """HF SiglipModel state dict -> big_vision's npz arrays (inverse of convert_siglip_to_hf)."""
  def attention(prefix, q, k, v, o):  # torch [out, in] weights -> flax [in, heads, head_dim] kernels
    out = {}
    for name, (w, b) in (("query", q), ("key", k), ("value", v)):
      out[f"{prefix}/{name}/kernel"] = w.T.reshape(w.shape[1], heads, -1)
      out[f"{prefix}/{name}/bias"] = b.reshape(heads, -1)
    out[f"{prefix}/out/kernel"] = o[0].T.reshape(heads, -1, o[0].shape[0])
    out[f"{prefix}/out/bias"] = o[1]
    return out

  def dense_ln(prefix, hf, names):
    out = {}
    for bv, h in names:
      if bv.startswith("LayerNorm"):
        out[f"{prefix}/{bv}/scale"], out[f"{prefix}/{bv}/bias"] = sd[f"{hf}.{h}.weight"], sd[f"{hf}.{h}.bias"]
      else:
        out[f"{prefix}/{bv}/kernel"], out[f"{prefix}/{bv}/bias"] = sd[f"{hf}.{h}.weight"].T, sd[f"{hf}.{h}.bias"]
    return out

  block = (("LayerNorm_0", "layer_norm1"), ("LayerNorm_1", "layer_norm2"), ("MlpBlock_0/Dense_0", "mlp.fc1"),
           ("MlpBlock_0/Dense_1", "mlp.fc2"))
  p = {"img/embedding/kernel": sd["vision_model.embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0),
       "img/embedding/bias": sd["vision_model.embeddings.patch_embedding.bias"],
       "img/pos_embedding": sd["vision_model.embeddings.position_embedding.weight"][None],
       "txt/Embed_0/embedding": sd["text_model.embeddings.token_embedding.weight"],
       "txt/pos_embedding": sd["text_model.embeddings.position_embedding.weight"][None],
       "txt/head/kernel": sd["text_model.head.weight"].T, "txt/head/bias": sd["text_model.head.bias"],
       "t": sd["logit_scale"], "b": sd["logit_bias"]}
  for tower, prefix, norm in (("vision_model", "img/Transformer", "post_layernorm"),
                              ("text_model", "txt/Encoder_0", "final_layer_norm")):
    layers = []
    i = 0
    while f"{tower}.encoder.layers.{i}.layer_norm1.weight" in sd:
      hf = f"{tower}.encoder.layers.{i}"
      w = lambda n: (sd[f"{hf}.self_attn.{n}.weight"], sd[f"{hf}.self_attn.{n}.bias"])
      layer = dense_ln("", hf, block)
      layer.update(attention("/MultiHeadDotProductAttention_0", w("q_proj"), w("k_proj"), w("v_proj"), w("out_proj")))
      layers.append(layer)
      i += 1
    if scanned:  # big_vision's scan=True layout: one block, a leading layer axis
      p.update({f"{prefix}/encoderblock{k}": np.stack([layer[k] for layer in layers]) for k in layers[0]})
    else:
      p.update({f"{prefix}/encoderblock_{i}{k}": a for i, layer in enumerate(layers) for k, a in layer.items()})
    p[f"{prefix}/encoder_norm/scale"], p[f"{prefix}/encoder_norm/bias"] = sd[f"{tower}.{norm}.weight"], sd[
        f"{tower}.{norm}.bias"]
  head = "vision_model.head"
  qkv_w, qkv_b = np.split(sd[f"{head}.attention.in_proj_weight"], 3), np.split(sd[f"{head}.attention.in_proj_bias"], 3)
  p.update(attention("img/MAPHead_0/MultiHeadDotProductAttention_0", (qkv_w[0], qkv_b[0]), (qkv_w[1], qkv_b[1]),
                     (qkv_w[2], qkv_b[2]), (sd[f"{head}.attention.out_proj.weight"],
                                            sd[f"{head}.attention.out_proj.bias"])))
  p.update(dense_ln("img/MAPHead_0", head, (("LayerNorm_0", "layernorm"), ("MlpBlock_0/Dense_0", "mlp.fc1"),
                                            ("MlpBlock_0/Dense_1", "mlp.fc2"))))
  p["img/MAPHead_0/probe"] = sd[f"{head}.probe"]
  return {f"params/{k}": v for k, v in p.items()}


# ---- inputs and reference outputs -------------------------------------------------------------

def pixels(n: int, size: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def clip_ids(vocab: int, length: int, lengths=(3, 1, 6, 9)) -> np.ndarray:
  """vljax rows [BOS] t... [EOS] 0... of CLIP's shifted ids (HF id + 1; BOS/EOS the last two HF ids)."""
  rng = np.random.default_rng(1)
  ids = np.zeros((len(lengths), length), np.int32)
  for row, n in enumerate(lengths):
    ids[row, :n + 2] = [vocab - 2 + 1, *rng.integers(1, vocab - 2, n) + 1, vocab - 1 + 1]
  return ids


def clip_hf_ids(ids: np.ndarray, eos: int) -> np.ndarray:
  """vljax CLIP rows -> HF ids (minus the offset), padded with EOS as HF's CLIP tokenizer pads."""
  return np.where(ids > 0, ids - 1, eos)


def siglip_ids(vocab: int, length: int, lengths=(3, 1, 6, 9), eos: int = 1) -> np.ndarray:
  """SigLIP rows t... [EOS] [EOS]...: no BOS, EOS-padded (tokenizer options bos=none, pad=eos)."""
  rng = np.random.default_rng(2)
  ids = np.full((len(lengths), length), eos, np.int32)
  for row, n in enumerate(lengths):
    ids[row, :n] = rng.integers(2, vocab, n)
  return ids


def unit(x: np.ndarray) -> np.ndarray:
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


@torch.no_grad()
def hf_outputs(model, pixels_u8: np.ndarray, hf_ids: np.ndarray, normalization: str) -> dict[str, np.ndarray]:
  pixel_values = torch.from_numpy(images_lib.normalize(pixels_u8, normalization)).permute(0, 3, 1, 2)
  out = model(pixel_values=pixel_values, input_ids=torch.from_numpy(hf_ids).long())
  return dict(img=unit(out.image_embeds.numpy()), txt=unit(out.text_embeds.numpy()),
              logits=out.logits_per_image.numpy())


@functools.lru_cache(maxsize=None)
def _forward(model_cfg_json: str):
  model = get_model(json.loads(model_cfg_json))

  def forward(params, image, ids):
    out = model.apply({"params": params}, image, ids)
    logits = out["logit_scale"] * out["img_emb"] @ out["txt_emb"].T + out.get("logit_bias", 0.0)
    return dict(img=out["img_emb"], txt=out["txt_emb"], logits=logits)

  return jax.jit(forward)


def vljax_outputs(converted, pixels_u8: np.ndarray, ids: np.ndarray, normalization: str = "siglip"
                  ) -> dict[str, np.ndarray]:
  """One jit per model config: formats converting to the same model share the compiled function."""
  forward = _forward(json.dumps(converted.model_cfg, sort_keys=True))
  images = images_lib.normalize(pixels_u8, normalization)
  out = forward(converted.params, jnp.asarray(images), jnp.asarray(ids))
  return jax.tree.map(np.asarray, out)


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.max(np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)))


def assert_matches(ours: dict, reference: dict, what: str) -> dict[str, float]:
  errors = {k: relative_error(ours[k], reference[k]) for k in ("img", "txt")}
  print(f"{what}: max relative error image {errors['img']:.2e}, text {errors['txt']:.2e}")
  assert max(errors.values()) < TOLERANCE, (what, errors)
  np.testing.assert_allclose(ours["logits"], reference["logits"], rtol=1e-3, atol=1e-3 * np.abs(
      reference["logits"]).max())
  # zero-shot: every image ranks the texts in the same order
  np.testing.assert_array_equal(np.argsort(-ours["logits"], axis=1), np.argsort(-reference["logits"], axis=1))
  return errors


# ---- fixtures: one HF model (and its reference outputs) per family and size ----------------------

def reference_family(kind: str, small: bool, root):
  if kind == "clip":
    model = hf_clip(small)
    vocab, length = model.config.text_config.vocab_size, model.config.text_config.max_position_embeddings
    ids = clip_ids(vocab, length)
    ref = hf_outputs(model, pixels(4, model.config.vision_config.image_size), clip_hf_ids(ids, vocab - 1), "clip")
  else:
    model = hf_siglip(small)
    vocab, length = model.config.text_config.vocab_size, model.config.text_config.max_position_embeddings
    ids = siglip_ids(vocab, length)
    ref = hf_outputs(model, pixels(4, model.config.vision_config.image_size), ids, "siglip")
  folder = root / f"hf_{kind}"
  model.save_pretrained(folder)
  return dict(model=model, folder=folder, ids=ids, ref=ref, sd=state_dict(model),
              pixels=pixels(4, model.config.vision_config.image_size))


def torchscript_archive(arrays: dict[str, np.ndarray], path: str) -> None:
  """A TorchScript archive holding `arrays` under their dotted names, as OpenAI publishes CLIP."""
  class Node(torch.nn.Module):
    def forward(self, x):
      return x

  root = Node()
  for name, array in arrays.items():
    *path_parts, leaf = name.split(".")
    module = root
    for part in path_parts:
      if not hasattr(module, part):
        module.add_module(part, Node())
      module = getattr(module, part)
    tensor = torch.from_numpy(np.asarray(array))
    if tensor.is_floating_point() and tensor.ndim:
      module.register_parameter(leaf, torch.nn.Parameter(tensor))
    else:
      module.register_buffer(leaf, tensor)
  torch.jit.save(torch.jit.trace(root, torch.ones(1)), path)


def write_checkpoint(family: dict, fmt: str, path) -> str:
  """The family's HF weights in `fmt`, written to `path` (.safetensors, .pt, TorchScript _jit.pt, .npz,
  big_vision's scanned layout _scanned.npz)."""
  path = str(path)
  if fmt == "openai_clip":
    arrays = openai_layout(family["sd"])
    if path.endswith("_jit.pt"):
      torchscript_archive(arrays, path)
    elif path.endswith(".pt"):
      torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()}, path)
    else:
      import safetensors.numpy
      safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, path)
  else:
    heads = family["model"].config.vision_config.num_attention_heads
    np.savez(path, **big_vision_layout(family["sd"], heads, scanned=path.endswith("_scanned.npz")))
  return path



# ---- decoder-only language models (vljax/convert/hf_lm.py) ---------------------------------------------

LM_VOCAB, LM_LEN = 96, 32
LM_SIZES = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                vocab_size=LM_VOCAB, max_position_embeddings=LM_LEN)
# family -> (transformers config, special tokens at their ids): ids as the family's tokenizers put them
# (Llama: <unk> 0, <s> 1, </s> 2; OPT: <s> 0, <pad> 1, </s> 2; GPT-2 and Qwen2: one end-of-text token).
LM_FAMILIES = {
    "gpt2": (lambda: transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_inner=128, vocab_size=LM_VOCAB,
                                             n_positions=LM_LEN, bos_token_id=LM_VOCAB - 1,
                                             eos_token_id=LM_VOCAB - 1),
             {LM_VOCAB - 1: "<|endoftext|>"}),
    "opt": (lambda: transformers.OPTConfig(**LM_SIZES, ffn_dim=128, word_embed_proj_dim=64, pad_token_id=1,
                                           bos_token_id=2, eos_token_id=2),
            {0: "<s>", 1: "<pad>", 2: "</s>"}),
    "llama": (lambda: transformers.LlamaConfig(**LM_SIZES, bos_token_id=1, eos_token_id=2, rope_theta=500.0),
              {0: "<unk>", 1: "<s>", 2: "</s>"}),
    "mistral": (lambda: transformers.MistralConfig(**LM_SIZES, num_key_value_heads=2, head_dim=8,
                                                   bos_token_id=1, eos_token_id=2, sliding_window=None),
                {0: "<unk>", 1: "<s>", 2: "</s>"}),
    "qwen2": (lambda: transformers.Qwen2Config(**LM_SIZES, num_key_value_heads=1, tie_word_embeddings=True,
                                               bos_token_id=LM_VOCAB - 1, eos_token_id=LM_VOCAB - 1),
              {LM_VOCAB - 1: "<|endoftext|>"}),
}


def random_lm(family: str, seed: int = 0):
  """A transformers causal LM of `family` with random weights: N(0, 0.05) everywhere (biases included), norm
  scales around 1, so a mapping error anywhere shows in the logits; float32, eval mode."""
  make_config, _ = LM_FAMILIES[family]
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(make_config(), dtype=torch.float32)
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(0.05 * torch.randn_like(p))
      if "norm" in name and name.endswith("weight") or "ln_" in name and name.endswith("weight"):
        p.add_(1.0)
  return model.eval()


def write_lm_tokenizer(family: str, folder) -> str:
  """A word-level tokenizer.json for the family's vocabulary: its special tokens at their ids, "w<i>" at
  every other id i. Returns its path."""
  import tokenizers
  _, specials = LM_FAMILIES[family]
  vocab = {specials.get(i, f"w{i}"): i for i in range(LM_VOCAB)}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token=specials.get(0, "w0")))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tok.add_special_tokens(list(specials.values()))
  path = str(folder / "tokenizer.json")
  tok.save(path)
  return path


def lm_prompt_ids(batch: int, length: int, seed: int = 0) -> np.ndarray:
  """int64 [batch, length] of checkpoint ids, none special (3 .. LM_VOCAB - 2)."""
  return np.random.default_rng(seed).integers(3, LM_VOCAB - 1, (batch, length))


def hf_lm_logits(model, ids: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(ids)).logits.numpy()


def hf_lm_greedy(model, ids: np.ndarray, new_tokens: int) -> np.ndarray:
  """transformers' generate(do_sample=False) of `new_tokens` tokens after each prompt row (one row at a time,
  so prompts of unequal lengths need no padding); no EOS stop."""
  rows = []
  for row in ids:
    with torch.no_grad():
      out = model.generate(torch.from_numpy(row[None]), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           do_sample=False, eos_token_id=None, pad_token_id=0)
    rows.append(out[0, len(row):].numpy())
  return np.stack(rows)


# ---- BLIP (vljax/convert/hf_blip.py) ------------------------------------------------------------------

# A BERT-like WordPiece vocabulary: BLIP's specials (bert-base-uncased's at other ids, [DEC] and [ENC] last) and
# "w<i>" words; text and image widths differ, so the cross-attention's memory width is tested.
BLIP_SPECIALS = {0: "[PAD]", 1: "[UNK]", 2: "[CLS]", 3: "[SEP]", 4: "[MASK]", 98: "[DEC]", 99: "[ENC]"}
BLIP_VOCAB, BLIP_LEN, BLIP_IMAGE = 100, 16, 32
BLIP_VISION = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                   image_size=BLIP_IMAGE, patch_size=8)
BLIP_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 vocab_size=BLIP_VOCAB, max_position_embeddings=BLIP_LEN, bos_token_id=98, pad_token_id=0,
                 sep_token_id=3, eos_token_id=3)


def hf_blip(architecture: str, seed: int = 0):
  """A transformers BLIP of `architecture` with random weights: N(0, 0.05) everywhere (biases included), LayerNorm
  scales around 1, so that a mapping error anywhere shows in the outputs; float32, eval mode."""
  from transformers.initialization import no_init_weights
  torch.manual_seed(seed)
  config = transformers.BlipConfig(text_config=BLIP_TEXT, vision_config=BLIP_VISION, image_text_hidden_size=32)
  with no_init_weights():
    model = getattr(transformers, architecture)(config)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(0.05 * torch.randn_like(p))
    for m in model.modules():
      if isinstance(m, torch.nn.LayerNorm):
        m.weight.add_(1.0)
  return model.eval()


def write_blip_tokenizer(folder) -> str:
  """BERT's tokenizer.json layout (WordPiece, [CLS] ... [SEP]) over the BLIP_SPECIALS + "w<i>" vocabulary."""
  import tokenizers
  vocab = {BLIP_SPECIALS.get(i, f"w{i}"): i for i in range(BLIP_VOCAB)}
  tok = tokenizers.Tokenizer(tokenizers.models.WordPiece(vocab, unk_token="[UNK]"))
  tok.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
  tok.post_processor = tokenizers.processors.TemplateProcessing(
      single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
  tok.decoder = tokenizers.decoders.WordPiece()
  tok.add_special_tokens(list(BLIP_SPECIALS.values()))
  path = str(folder / "tokenizer.json")
  tok.save(path)
  return path


def blip_ids(length: int, lengths=(3, 1, 6, 9), seed: int = 3) -> np.ndarray:
  """Rows [CLS] w... [SEP] [PAD]... (vljax's and the BLIP processor's layout: the same ids in both)."""
  rng = np.random.default_rng(seed)
  ids = np.zeros((len(lengths), length), np.int32)
  for row, n in enumerate(lengths):
    ids[row, :n + 2] = [2, *rng.integers(5, 98, n), 3]
  return ids


@torch.no_grad()
def hf_blip_retrieval_outputs(model, pixels_u8: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
  """ITC embeddings (unit, as BlipForImageTextRetrieval's use_itm_head=False computes them), their cosines, and
  ITM logits of the pairs (image i, text i)."""
  pixel_values = torch.from_numpy(images_lib.normalize(pixels_u8, "clip")).permute(0, 3, 1, 2)
  input_ids, mask = torch.from_numpy(ids).long(), torch.from_numpy(ids != 0).long()
  image_embeds = model.vision_model(pixel_values=pixel_values).last_hidden_state
  text = model.text_encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
  img = torch.nn.functional.normalize(model.vision_proj(image_embeds[:, 0]), dim=-1)
  txt = torch.nn.functional.normalize(model.text_proj(text[:, 0]), dim=-1)
  cosines = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=mask, use_itm_head=False).itm_score
  itm = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=mask, use_itm_head=True).itm_score
  return dict(img=img.numpy(), txt=txt.numpy(), cosines=cosines.numpy(), itm=itm.numpy())


@torch.no_grad()
def hf_blip_caption_outputs(model, pixels_u8: np.ndarray, ids: np.ndarray, new_tokens: int) -> dict[str, np.ndarray]:
  """Teacher-forced logits of rows [DEC] w... [SEP] (BLIP's decoder input: vljax's rows with [DEC] for [CLS]) and
  greedy `generate` tokens after [DEC] (stopping at [SEP], then [PAD])."""
  pixel_values = torch.from_numpy(images_lib.normalize(pixels_u8, "clip")).permute(0, 3, 1, 2)
  hf_ids = np.where(np.arange(ids.shape[1]) == 0, BLIP_TEXT["bos_token_id"], ids)
  logits = model(pixel_values=pixel_values, input_ids=torch.from_numpy(hf_ids).long(),
                 attention_mask=torch.from_numpy(ids != 0).long()).logits
  greedy = model.generate(pixel_values=pixel_values, max_new_tokens=new_tokens, do_sample=False, num_beams=1)
  return dict(logits=logits.numpy(), greedy=greedy[:, 1:].numpy())
