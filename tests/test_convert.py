"""Importing CLIP / SigLIP weights: every format against Hugging Face transformers' PyTorch models.

The checkpoints are random models built from transformers configs (nothing is downloaded), saved
with save_pretrained, and re-laid-out into OpenAI's and big_vision's formats by the inverse of
transformers' published conversion scripts. Token ids: HF id = vljax id - id_offset (1 for CLIP).
"""

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
from vljax import convert  # noqa: E402
from vljax.convert import towers  # noqa: E402
from vljax.convert.__main__ import main as convert_main  # noqa: E402
from vljax.data import images as images_lib  # noqa: E402
from vljax.data import pipeline  # noqa: E402
from vljax.models import get_model  # noqa: E402

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

def _family(kind: str, small: bool, root):
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


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory):
  return _family("clip", True, tmp_path_factory.mktemp("small_clip"))


@pytest.fixture(scope="module")
def small_siglip(tmp_path_factory):
  return _family("siglip", True, tmp_path_factory.mktemp("small_siglip"))


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


# ---- numerics, every format -------------------------------------------------------------------

@pytest.mark.parametrize("fmt,file", [("hf_clip", None), ("openai_clip", "clip.safetensors"),
                                      ("openai_clip", "clip.pt"), ("openai_clip", "clip_jit.pt")])
def test_small_clip_matches_transformers(small_clip, tmp_path, fmt, file):
  path = small_clip["folder"] if file is None else write_checkpoint(small_clip, fmt, tmp_path / file)
  assert convert.detect_format(str(path)) == fmt
  converted = convert.import_checkpoint(str(path))
  assert converted.data["format"] == fmt and converted.data["image_size"] == SMALL_IMAGE
  c = converted.model_cfg
  assert (c["image"]["activation"], c["image"]["norm_eps"], c["text"]["causal"]) == ("quick_gelu", 1e-5, True)
  assert c["text"]["vocab_size"] == 128  # 1 + 100 + <image>, <eoc>: padded to 128
  table = converted.params["txt"]["embedding"]["embedding"]
  hf_table = small_clip["sd"]["text_model.embeddings.token_embedding.weight"]
  np.testing.assert_array_equal(table[1:SMALL_VOCAB + 1], hf_table)  # vljax id = HF id + 1
  assert not table[0].any() and not table[SMALL_VOCAB + 1:].any()
  ours = vljax_outputs(converted, small_clip["pixels"], small_clip["ids"])
  assert_matches(ours, small_clip["ref"], f"small CLIP via {fmt}")


def test_clip_normalised_inputs_keep_the_published_patch_embedding(small_clip):
  # Default: CLIP's mean/std are folded into the patch embedding for vljax's [-1, 1] pixels (exact: the
  # numerics tests above). With input_normalization="clip" the conv is kept as published, bias zero.
  assert np.array_equal(images_lib.normalize(small_clip["pixels"], "siglip"),
                        pipeline.preprocess_images(small_clip["pixels"]))
  converted = convert.import_checkpoint(str(small_clip["folder"]), input_normalization="clip")
  assert converted.data["normalization"] == "clip"
  embedding = converted.params["img"]["embedding"]
  conv = small_clip["sd"]["vision_model.embeddings.patch_embedding.weight"]
  np.testing.assert_allclose(embedding["kernel"], conv.transpose(2, 3, 1, 0), rtol=1e-6)
  assert not embedding["bias"].any()
  ours = vljax_outputs(converted, small_clip["pixels"], small_clip["ids"], normalization="clip")
  assert_matches(ours, small_clip["ref"], "small CLIP, clip-normalised inputs")


@pytest.mark.parametrize("fmt,file", [("hf_siglip", None), ("big_vision_siglip", "siglip.npz"),
                                      ("big_vision_siglip", "siglip_scanned.npz")])
def test_small_siglip_matches_transformers(small_siglip, tmp_path, fmt, file):
  path = small_siglip["folder"] if file is None else write_checkpoint(small_siglip, fmt, tmp_path / file)
  assert convert.detect_format(str(path)) == fmt
  converted = convert.import_checkpoint(str(path))
  c = converted.model_cfg
  assert (c["image"]["pool"], c["image"]["head"], c["text"]["causal"], c["text"]["head_bias"]) == (
      "map", False, False, True)
  assert c["logit_bias_init"] == pytest.approx(float(small_siglip["sd"]["logit_bias"][0]))
  assert "head" not in converted.params["img"] and "b" in converted.params
  ours = vljax_outputs(converted, small_siglip["pixels"], small_siglip["ids"])
  assert_matches(ours, small_siglip["ref"], f"small SigLIP via {fmt}")


@pytest.mark.slow
def test_clip_vit_b32_every_format_matches_transformers(tmp_path):
  family = _family("clip", False, tmp_path)
  for fmt, path in (("hf_clip", family["folder"]), ("openai_clip", write_checkpoint(family, "openai_clip",
                                                                                     tmp_path / "b32.safetensors"))):
    converted = convert.import_checkpoint(str(path))
    c = converted.model_cfg
    assert (c["image"]["variant"], c["text"]["variant"], c["embed_dim"], c["text"]["max_len"]) == ("B/32", "B", 512, 77)
    assert_matches(vljax_outputs(converted, family["pixels"], family["ids"]), family["ref"], f"CLIP B/32 via {fmt}")


@pytest.mark.slow
def test_siglip_b16_every_format_matches_transformers(tmp_path):
  family = _family("siglip", False, tmp_path)
  for fmt, path in (("hf_siglip", family["folder"]),
                    ("big_vision_siglip", write_checkpoint(family, "big_vision_siglip", tmp_path / "b16.npz"))):
    converted = convert.import_checkpoint(str(path))
    c = converted.model_cfg
    assert (c["image"]["variant"], c["text"]["variant"], c["embed_dim"], c["text"]["max_len"]) == ("B/16", "L", 768, 64)
    assert_matches(vljax_outputs(converted, family["pixels"], family["ids"]), family["ref"], f"SigLIP B/16 via {fmt}")


# ---- position embedding resampling --------------------------------------------------------------

def test_resize_posemb_keeps_the_class_row_and_resamples_the_grid():
  grid, new = 7, 14
  yy, xx = np.mgrid[:grid, :grid].astype(np.float32)
  field = lambda y, x: np.stack([np.sin(x / 3), np.cos(y / 4), np.full_like(x, 0.5)], axis=-1)
  cls = np.array([[9.0, -9.0, 3.0]], np.float32)
  posemb = np.concatenate([cls, field(yy, xx).reshape(-1, 3)])
  out = towers.resize_posemb(posemb, grid, new, num_prefix=1)
  assert out.shape == (1 + new * new, 3)
  np.testing.assert_array_equal(out[0], cls[0])
  assert towers.resize_posemb(posemb, grid, grid, num_prefix=1) is posemb
  # The new grid's cell centres, in the old grid's coordinates: the resampled field follows the
  # smooth one (away from the border, where the resampling kernel is cut) and constants stay exact.
  centres = (np.arange(new) + 0.5) * grid / new - 0.5
  expected = field(*np.meshgrid(centres, centres, indexing="ij"))
  got = out[1:].reshape(new, new, 3)
  np.testing.assert_allclose(got[2:-2, 2:-2], expected[2:-2, 2:-2], atol=0.02)
  np.testing.assert_allclose(got[..., 2], 0.5, atol=1e-6)


def test_import_at_another_image_size_resamples_clip_and_siglip_posembs(small_clip, small_siglip):
  clip = convert.import_checkpoint(str(small_clip["folder"]), image_size=48)
  siglip = convert.import_checkpoint(str(small_siglip["folder"]), image_size=48)
  assert clip.data["image_size"] == siglip.data["image_size"] == 48
  clip_pe = clip.params["img"]["posemb"]["pos_embedding"]
  original = small_clip["sd"]["vision_model.embeddings.position_embedding.weight"]
  assert clip_pe.shape == (1 + 6 * 6, 128) and siglip.params["img"]["posemb"]["pos_embedding"].shape == (36, 128)
  np.testing.assert_array_equal(clip_pe[0], original[0])  # the class token's row is kept
  np.testing.assert_allclose(clip_pe[1:], towers.resize_posemb(original[1:], 4, 6), rtol=1e-6)
  for converted in (clip, siglip):
    ids = clip_ids(SMALL_VOCAB, SMALL_LEN) if converted is clip else siglip_ids(SMALL_VOCAB, SMALL_LEN)
    out = vljax_outputs(converted, pixels(4, 48), ids)
    assert out["img"].shape[0] == 4 and np.isfinite(out["img"]).all()
  with pytest.raises(ValueError, match="image_size 50 is not divisible by the checkpoint's patch size 8"):
    convert.import_checkpoint(str(small_clip["folder"]), image_size=50)


# ---- workdirs: python -m vljax.convert, vljax.load, init_from --------------------------------------

def word_tokenizer(path, words: list[str]) -> str:
  """A word-level tokenizer.json over `words` (id = position), as the tokenizers library writes it."""
  import tokenizers
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[2]))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tok.save(str(path))
  return str(path)


WORDS = [f"w{i}" for i in range(SMALL_VOCAB)]
# CLIP's vocabulary: id 0 is a real token ("!"), BOS/EOS are the last two ids, no padding id.
CLIP_WORDS = ["!", *WORDS[1:SMALL_VOCAB - 2], "<|startoftext|>", "<|endoftext|>"]
TEXTS = ["w5 w7 w9", "w3", "w10 w11 w12 w13 w14 w15"]


def test_cli_workdir_opens_with_vljax_load_and_matches_transformers(small_clip, tmp_path):
  # The folder's own tokenizer.json is picked up.
  folder = shutil.copytree(small_clip["folder"], tmp_path / "hf_clip")
  word_tokenizer(folder / "tokenizer.json", CLIP_WORDS)
  out = tmp_path / "clip"
  assert convert_main(["--checkpoint", str(folder), "--workdir", str(out)]) == 0
  cfg = json.loads((out / "config.json").read_text())
  assert cfg["data"]["tokenizer"].startswith("hf:") and cfg["data"]["image_size"] == SMALL_IMAGE
  assert cfg["data"].get("normalization", "siglip") == "siglip"  # CLIP's mean/std are in the weights
  model = vljax.load(str(out))
  assert model.tokenizer.id_offset == 1 and model.step == 0
  np.testing.assert_allclose(model.encode_image(small_clip["pixels"]), small_clip["ref"]["img"], atol=TOLERANCE)
  ids = model.tokenizer.encode(TEXTS, SMALL_LEN)
  assert ids[0, :5].tolist() == [SMALL_VOCAB - 1, 6, 8, 10, SMALL_VOCAB]  # HF's ids + 1
  with torch.no_grad():
    ref = small_clip["model"].get_text_features(input_ids=torch.from_numpy(clip_hf_ids(ids, SMALL_VOCAB - 1)).long())
  np.testing.assert_allclose(model.encode_text(TEXTS), unit(ref.pooler_output.numpy()), atol=TOLERANCE)
  with pytest.raises(ValueError, match="already holds checkpoints"):
    convert.write_workdir(convert.import_checkpoint(str(folder)), str(out))


def test_workdir_with_published_patch_weights_normalises_inputs_with_clip_statistics(small_clip, tmp_path):
  # vljax.load follows the workdir's data.normalization: CLIP mean/std here, not [-1, 1].
  out = tmp_path / "clip_stats"
  assert convert_main(["--checkpoint", str(small_clip["folder"]), "--workdir", str(out),
                       "--input_normalization", "clip"]) == 0
  assert json.loads((out / "config.json").read_text())["data"]["normalization"] == "clip"
  np.testing.assert_allclose(vljax.load(str(out)).encode_image(small_clip["pixels"]), small_clip["ref"]["img"],
                             atol=TOLERANCE)


def test_cli_siglip_workdir_with_an_eos_padding_tokenizer(small_siglip, tmp_path):
  # SigLIP's rows: no BOS, EOS-padded to the full length; the final position is pooled.
  path = word_tokenizer(tmp_path / "tokenizer.json", ["<pad>", "</s>", "<unk>", *WORDS[3:]])
  out = tmp_path / "siglip"
  assert convert_main(["--checkpoint", str(small_siglip["folder"]), "--workdir", str(out),
                       "--tokenizer", f"hf:{path}?bos=none&pad=eos"]) == 0
  model = vljax.load(str(out))
  ids = model.tokenizer.encode(TEXTS, SMALL_LEN)
  assert ids[1].tolist() == [3] + [1] * (SMALL_LEN - 1)
  with torch.no_grad():
    ref = small_siglip["model"].get_text_features(input_ids=torch.from_numpy(ids).long())
  np.testing.assert_allclose(model.encode_text(TEXTS), unit(ref.pooler_output.numpy()), atol=TOLERANCE)
  np.testing.assert_allclose(model.encode_image(small_siglip["pixels"]), small_siglip["ref"]["img"], atol=TOLERANCE)
  labels, probs = model.zero_shot(small_siglip["pixels"][:1], ["w5", "w6"], templates=("{}",))
  assert probs.shape == (1, 2)


@pytest.mark.slow
def test_converted_workdir_is_an_init_from_source(small_clip, tmp_path):
  import ml_collections
  from flax import traverse_util
  from vljax.train import checkpoint as ckpt_lib
  from vljax.train.trainer import train_and_evaluate

  source = str(tmp_path / "converted")
  converted = convert.import_checkpoint(str(small_clip["folder"]))
  convert.write_workdir(converted, source)
  cfg = ml_collections.ConfigDict(json.loads((tmp_path / "converted" / "config.json").read_text()))
  cfg.update(total_steps=2, batch_size=8, evals={}, log_every=1, progress_bar=False)
  cfg.init_from.workdir = source
  cfg.optimizer.lr = 0.0  # the steps run, the weights stay the imported ones
  cfg.checkpoint.update(every=2, async_save=False)
  cfg.data.num_threads = 1
  run = str(tmp_path / "finetune")
  train_and_evaluate(cfg, run)
  trained, step = ckpt_lib.load_params(run)
  assert step == 2
  expected = traverse_util.flatten_dict(converted.params, sep="/")
  got = traverse_util.flatten_dict(trained, sep="/")
  assert set(got) == set(expected)
  for k, v in expected.items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)


# ---- fitting to a training config, and errors -------------------------------------------------------

RECIPE = '''
from vljax import config as common


def get_config(arg=None):
  a = common.parse_arg(arg, embed_dim="48", activation="quick_gelu")
  tower = dict(width=128, depth=2, mlp_dim=256, num_heads=2, head_bias=False, activation=a["activation"],
               norm_eps=1e-5)
  c = common.base_config()
  c.model = dict(name="two_tower", embed_dim=int(a["embed_dim"]), scan=True,
                 image=dict(tower, variant="B/8", pool="tok", pre_norm=True, cls_posemb=True),
                 text=dict(tower, variant="B", causal=True, vocab_size=128))
  c.data.update(image_size=48, max_len=12)
  return c
'''


def test_config_fits_sizes_and_scan_and_names_the_first_mismatch(small_clip, tmp_path):
  recipe = tmp_path / "recipe.py"
  recipe.write_text(RECIPE)
  # The recipe's tokenizer is "shapes" (id offset 0): the CLIP one given here overrides it.
  tokenizer = "hf:" + word_tokenizer(tmp_path / "tokenizer.json", CLIP_WORDS)
  converted = convert.import_checkpoint(str(small_clip["folder"]), tokenizer=tokenizer, config=str(recipe))
  assert converted.data["tokenizer"] == tokenizer
  assert converted.model_cfg["scan"] and "layers" in converted.params["txt"]["encoder"]
  assert converted.params["txt"]["posemb"]["pos_embedding"].shape == (12, 128)
  assert converted.data["image_size"] == 48
  # Text rows of <= 12 tokens: the shortened, scanned text tower still matches transformers exactly.
  out = vljax_outputs(converted, pixels(4, 48), small_clip["ids"][:, :12])
  assert relative_error(out["txt"], small_clip["ref"]["txt"]) < TOLERANCE

  with pytest.raises(ValueError, match=r"img/head/kernel is \(128, 48\) in the checkpoint and \(128, 32\) in "
                                       r"the model"):
    convert.import_checkpoint(str(small_clip["folder"]), config=f"{recipe}:embed_dim=32")
  with pytest.raises(ValueError, match="image.activation: checkpoint 'quick_gelu', config 'gelu'"):
    convert.import_checkpoint(str(small_clip["folder"]), config=f"{recipe}:activation=gelu")
  assert convert_main(["--checkpoint", str(small_clip["folder"]), "--workdir", str(tmp_path / "w"),
                       "--config", f"{recipe}:embed_dim=32"]) == 2


def test_bad_inputs_name_the_value_and_the_choices(small_clip, tmp_path):
  folder = str(small_clip["folder"])
  with pytest.raises(FileNotFoundError, match="nowhere.pt"):
    convert.import_checkpoint(str(tmp_path / "nowhere.pt"))
  with pytest.raises(ValueError, match=r"Unknown checkpoint format 'onnx'; valid: \['big_vision_siglip', "
                                       r"'hf_clip', 'hf_siglip', 'openai_clip'\]"):
    convert.import_checkpoint(folder, format="onnx")
  with pytest.raises(ValueError, match="Unknown activation 'relu'"):
    convert.import_checkpoint(folder, activation="relu")
  with pytest.raises(ValueError, match="Unknown input_normalization 'zscore'"):
    convert.import_checkpoint(folder, input_normalization="zscore")
  with pytest.raises(ValueError, match="model_type 'clip' is not 'siglip'; use format 'hf_clip'"):
    convert.import_checkpoint(folder, format="hf_siglip")
  with pytest.raises(ValueError, match="max_len 20 exceeds the checkpoint's 16 text positions"):
    convert.import_checkpoint(folder, max_len=20)

  bert = tmp_path / "bert"
  bert.mkdir()
  (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
  with pytest.raises(ValueError, match=r"model_type 'bert' is not supported; valid: \['clip', 'siglip'\]"):
    convert.import_checkpoint(str(bert))

  import safetensors.numpy
  arrays = openai_layout(small_clip["sd"])
  extra = dict(arrays, **{"visual.attn_pool.probe": np.zeros((1, 128), np.float32)})
  safetensors.numpy.save_file(extra, str(tmp_path / "extra.safetensors"))
  with pytest.raises(ValueError, match=r"1 tensors were not converted, e.g. \['visual.attn_pool.probe'\]"):
    convert.import_checkpoint(str(tmp_path / "extra.safetensors"))
  resnet = {"visual.layer1.0.conv1.weight": np.zeros((1, 1, 1, 1), np.float32)}
  safetensors.numpy.save_file(resnet, str(tmp_path / "rn50.safetensors"))
  with pytest.raises(ValueError, match="ResNet CLIP"):
    convert.import_checkpoint(str(tmp_path / "rn50.safetensors"))
  # open_clip models trained without QuickGELU: the state dict cannot tell, the caller can.
  gelu = convert.import_checkpoint(write_checkpoint(small_clip, "openai_clip", tmp_path / "oc.safetensors"),
                                   activation="gelu")
  assert gelu.model_cfg["image"]["activation"] == gelu.model_cfg["text"]["activation"] == "gelu"


# ---- the fine-tuning recipe: imported weights, real data, real evals ---------------------------------

@pytest.mark.slow
def test_finetune_recipe_trains_imported_weights_on_array_records_with_tfds_zero_shot(small_clip, tmp_path):
  import os

  import tensorflow_datasets as tfds

  import real_data
  from vljax import config as config_lib
  from vljax.data import shapes
  from vljax.metrics import read_metrics
  from vljax.train.trainer import train_and_evaluate

  folder = shutil.copytree(small_clip["folder"], tmp_path / "hf_clip")
  word_tokenizer(folder / "tokenizer.json", CLIP_WORDS)
  imported = tmp_path / "imported"
  assert convert_main(["--checkpoint", str(folder), "--workdir", str(imported)]) == 0
  real_data.write_array_records(tmp_path / "train", real_data.shapes_pairs(32, image_size=48))
  world = shapes.ShapesWorld(image_size=48)
  classes = [world.zeroshot_example(i) for i in range(16)]
  zeroshot_set = real_data.write_tfds(
      tmp_path / "tfds", "shapes_cls", {"validation": [dict(image=e["image"], label=e["label"]) for e in classes]},
      dict(image=tfds.features.Image(shape=(None, None, 3)),
           label=tfds.features.ClassLabel(names=world.zeroshot_classes())))

  recipe = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "finetune_imported.py")
  cfg = config_lib.load_config(recipe, f"init={imported},train=array_record:{tmp_path / 'train'},"
                                       f"zeroshot={zeroshot_set}")
  assert cfg.data.tokenizer.startswith("hf:") and cfg.data.image_size == SMALL_IMAGE
  cfg.update(batch_size=8, total_steps=2, log_every=1, progress_bar=False)
  cfg.evals.zeroshot.every = 2
  cfg.checkpoint.update(every=2, async_save=False)
  cfg.data.num_threads = 1
  final = train_and_evaluate(cfg, str(tmp_path / "ft"))
  assert 0 <= final["eval/zeroshot/top1"] <= final["eval/zeroshot/top5"] <= 1
  assert read_metrics(str(tmp_path / "ft"))["data/skipped"][2] == 0
  with pytest.raises(FileNotFoundError, match="vljax.convert"):
    config_lib.load_config(recipe, f"init={tmp_path / 'nowhere'}")
