"""Analytic FLOPs of the models, for MFU accounting.

Counts 2 FLOPs per multiply-accumulate of every matmul and conv, attention's QK^T and AV
included; elementwise ops (norms, GELU, softmax, adds) are left out, as MFU conventionally
does. A training step (forward + backward) costs ~3x the forward: the backward pass does
two matmuls (input and weight gradients) for each forward one. Remat recomputation is not
counted (MFU measures useful work), so remat lowers MFU as it should.
"""

from __future__ import annotations

from typing import Any

from vljax.models import cappa, coca, flamingo, llava, lm, two_tower

TRAIN_FLOPS_FACTOR = 3.0


def encoder_flops(length: int, width: int, mlp_dim: int, depth: int) -> float:
  """Forward FLOPs of `depth` pre-LN blocks on one sequence of `length` tokens."""
  n, d, m = length, width, mlp_dim
  qkv_out = 2 * n * d * 3 * d + 2 * n * d * d
  attention = 2 * (2 * n * n * d)  # QK^T and AV (the full square, even when causal)
  mlp = 2 * (2 * n * d * m)
  return float(depth * (qkv_out + attention + mlp))


def map_head_flops(length: int, width: int, mlp_dim: int) -> float:
  """Forward FLOPs of a MAP head: one probe query attending over `length` tokens, then its MLP."""
  n, d, m = length, width, mlp_dim
  return float(2 * d * d + 2 * 2 * n * d * d + 2 * 2 * n * d + 2 * d * d + 2 * 2 * d * m)


def vit_flops(settings: dict[str, Any], image_size: int, out_dim: int | None = None) -> float:
  """Forward FLOPs of one image through a ViT given its vit_settings()."""
  d, p = settings["width"], settings["patch"]
  if image_size % p:
    raise ValueError(f"image_size {image_size} is not divisible by patch {p}")
  grid = image_size // p
  n = grid * grid
  if settings["stem"] == "patch":
    flops = 2 * n * (p * p * 3) * d
  else:
    flops, size, cin = 0, image_size, 3
    for c in settings["stem_channels"]:
      size //= 2
      flops += 2 * size * size * (9 * cin) * c
      cin = c
    k = size // grid
    flops += 2 * n * (k * k * cin) * d
  tokens = n + 1 if settings["pool"] == "tok" else n
  flops += encoder_flops(tokens, d, settings["mlp_dim"], settings["depth"])
  if settings["pool"] == "map":
    flops += map_head_flops(n, d, settings["mlp_dim"])
  if out_dim is not None:
    flops += 2 * d * out_dim
  return float(flops)


def text_flops(settings: dict[str, Any], out_dim: int | None = None, extra_tokens: int = 0) -> float:
  """Forward FLOPs of one caption padded to max_len (+ extra_tokens, e.g. CoCa's [CLS]); the
  embedding lookup is a gather: free."""
  n, d = settings["max_len"] + extra_tokens, settings["width"]
  flops = encoder_flops(n, d, settings["mlp_dim"], settings["depth"])
  if settings["pool"] == "map":
    flops += map_head_flops(n, d, settings["mlp_dim"])
  if out_dim is not None:
    flops += 2 * d * out_dim
  return float(flops)


def cross_decoder_flops(settings: dict[str, Any], depth: int, memory_len: int, memory_width: int) -> float:
  """Forward FLOPs of a caption through `depth` blocks with cross-attention, and the vocab head."""
  n, d, s = settings["max_len"], settings["width"], memory_len
  cross = 2 * n * d * d + 2 * s * memory_width * 2 * d + 2 * (2 * n * s * d) + 2 * n * d * d
  return float(encoder_flops(n, d, settings["mlp_dim"], depth) + depth * cross
               + 2 * n * d * settings["vocab_size"])


def attention_pool_flops(queries: int, length: int, width: int, mlp_dim: int) -> float:
  """Forward FLOPs of `queries` learned probes attending over `length` tokens, then their MLP."""
  d = width
  return float(queries * (2 * d * d + 2 * d * d + 2 * 2 * d * mlp_dim) + 2 * 2 * length * d * d
               + 2 * 2 * queries * length * d)


def _image_tokens(settings: dict[str, Any], image_size: int) -> int:
  return (image_size // settings["patch"]) ** 2


def model_flops_per_example(model_cfg: Any, image_size: int) -> float:
  """Forward FLOPs for one (image, caption) pair; multiply by TRAIN_FLOPS_FACTOR for a train step."""
  cfg = dict(model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else model_cfg)
  name = cfg.pop("name", None)
  if name == "two_tower":
    c = two_tower.resolve_config(cfg)
    head = lambda tower: c["embed_dim"] if tower["head"] else None
    return vit_flops(c["image"], image_size, head(c["image"])) + text_flops(c["text"], head(c["text"]))
  if name == "coca":
    c = coca.resolve_config(cfg)
    img, txt = c["image"], c["text"]
    n = _image_tokens(img, image_size)
    pools = attention_pool_flops(c["num_queries"], n, img["width"], img["mlp_dim"])
    pools += attention_pool_flops(1, c["num_queries"] if c["pooler"] == "cascade" else n, img["width"],
                                  img["mlp_dim"])
    return (vit_flops(img, image_size) + pools + 2 * img["width"] * c["embed_dim"]
            + text_flops(txt, c["embed_dim"], extra_tokens=1)
            + cross_decoder_flops(txt, c["multimodal_depth"], c["num_queries"], img["width"]))
  if name == "cappa":
    c = cappa.resolve_config(cfg)
    img = c["image"]
    return vit_flops(img, image_size) + cross_decoder_flops(c["text"], c["text"]["depth"],
                                                            _image_tokens(img, image_size), img["width"])
  if name == "lm":
    t = lm.resolve_config(cfg)["text"]
    return lm_flops(t, t["max_len"])
  if name == "llava":
    c = llava.resolve_config(cfg)
    img, t = c["image"], c["text"]
    n = _image_tokens(img, image_size)
    projector = 2 * n * img["width"] * t["width"] + (2 * n * t["width"] ** 2 if c["projector"] == "mlp2x_gelu" else 0)
    # The LM runs over the text with the image tokens spliced in (the text itself is data.max_len, not
    # known here: count the model's full max_len, an upper bound).
    return vit_flops(img, image_size) + projector + lm_flops(t, t["max_len"])
  if name == "flamingo":
    c = flamingo.resolve_config(cfg)
    img, t = c["image"], c["text"]
    n, d, dv, m = _image_tokens(img, image_size), t["width"], img["width"], c["num_latents"]
    # Per image: the resampler's latents attend over tokens + latents. Per text token: each gated
    # block's cross-attention over one image's latents (the count this computes; masked keys of
    # other images are extra work XLA also does) and its MLP. Counted for one image per sequence.
    resampler = c["resampler_depth"] * (attention_pool_flops(m, n + m, dv, img["mlp_dim"]))
    blocks = len(range(0, t["depth"], c["cross_attn_every_n_layers"]))
    cross = blocks * (t["max_len"] * (4 * d * d + 4 * m * d + 4 * d * t["mlp_dim"]) + 4 * m * dv * d)
    return vit_flops(img, image_size) + resampler + cross + lm_flops(t, t["max_len"])
  raise ValueError(f"FLOPs are not known for model name {name!r}; known: two_tower, coca, cappa, lm, llava, "
                   "flamingo")


def lm_flops(text: dict[str, Any], length: int) -> float:
  """Forward FLOPs of a decoder-only LM over `length` positions, vocab head included."""
  return encoder_flops(length, text["width"], text["mlp_dim"], text["depth"]) + 2 * length * text["width"] * text[
      "vocab_size"]
