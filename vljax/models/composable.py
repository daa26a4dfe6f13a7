"""One vision-language model assembled from config: an image tower, an optional text encoder and
optional heads, so that objectives are compared on the same towers.

  image -> ViT -> pooled [-> attentional pooler] [-> img_proj] -> img_emb        (contrastive head)
             `-> tokens [-> memory pooler (memory_queries)] -> memory            (decoder head)
                                   `-> attentional pooler (image_pool_input="memory") -> ...img_emb
  text ids -> text tower -> pooled [-> txt_proj] -> txt_emb                      (contrastive head)
                        `-> tokens ------------------------------.  (decoder.input="text_tower")
  text ids -> decoder embedding (decoder.input="embed") -> CrossDecoder(memory) -> caption_logits
  (image tokens, text ids) -> image-grounded text encoder -> itm_logits, mlm_logits  (fusion head,
                              vljax/models/fusion.py; objectives run it through ModelAccess)

  model = dict(name="composable", image=dict(variant=...), text=dict(variant=...) or None,
               contrastive=dict(embed_dim, logit_scale_init, logit_bias_init, max_logit_scale,
                                image_pool="tower" | "map", image_pool_input="tokens" | "memory",
                                image_proj=True, image_proj_bias=True, text_proj=True, text_proj_bias=True)
                   or None,
               decoder=dict(variant=..., mode="autoregressive" | "parallel", parallel_fraction,
                            memory_queries=0, input="embed" | "text_tower", head_transform=False) or None,
               fusion=dict(share="none", variant=...) | dict(share="blip") or None)

CLIP/SigLIP/LiT: image + text + contrastive (a logit_bias_init gives the sigmoid loss its
bias; image_proj=False makes the pooled width the embedding, as SigLIP's image tower; *_proj_bias=False
are CLIP's bias-free projections). Cap: image + decoder; CapPa: decoder mode="parallel". CoCa:
text=dict(causal=True, pool="cls") (its unimodal decoder: [CLS] after the padding), decoder
input="text_tower" (the multimodal decoder continues from the unimodal one's token outputs: one shared
embedding), memory_queries=N, image_pool="map" with image_pool_input="memory" (the contrastive query
reads the N memory queries' outputs: CoCa's "cascade") or "tokens" (the ViT tokens: its "parallel").
BLIP: contrastive (ITC) + fusion (ITM, MLM) + decoder (LM), fusion share="blip". Published BLIP weights
(vljax/convert/hf_blip.py) add BERT's layout: text, fusion and decoder with norm_position="post", the image
tower's tokens keeping [CLS] (image.cls_in_tokens), the decoder's decoder.head_transform.
vljax/models/legacy.py maps each legacy model's config and params onto these. The image tower never
holds a projection (its head is always off): the same tower config gives the same `img` params under
every combination, so init_from and frozen-encoder evaluations treat them alike.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from vljax.models import flops, layers, model_config, naflex
from vljax.models.capabilities import EMBEDDINGS, GENERATION, IMAGE_FEATURES, LIKELIHOOD, MATCHING
from vljax.models.decoder import CrossDecoder, TokenEmbedding, causal_mask, vocab_logits
from vljax.models.fusion import resolve_fusion
from vljax.models.layers import check_choice, partitioned
from vljax.models.pooling import MAPHead
from vljax.models.registry import register_model
from vljax.models.text import TextTransformer, text_settings
from vljax.models.vit import PATCH_DROPOUT_STREAM, ViT, vit_settings

IMAGE_POOLS = ("tower", "map")  # the pooled ViT output; a MAP head
IMAGE_POOL_INPUTS = ("tokens", "memory")  # what the MAP head reads: the ViT tokens, the memory pooler's outputs
DECODER_MODES = ("autoregressive", "parallel")
DECODER_INPUTS = ("embed", "text_tower")  # its own token embedding; the text tower's token outputs (CoCa)
CONTRASTIVE_DEFAULTS = dict(embed_dim=128, logit_scale_init=1 / 0.07, logit_bias_init=None, max_logit_scale=100.0,
                            image_pool="tower", image_pool_input="tokens", image_proj=True, image_proj_bias=True,
                            text_proj=True, text_proj_bias=True)
# head_transform: BERT's dense + activation + LayerNorm before the vocabulary projection (BLIP's decoder).
DECODER_DEFAULTS = dict(mode="autoregressive", parallel_fraction=0.75, memory_queries=0, input="embed",
                        head_transform=False)
COMPOSABLE_DEFAULTS: dict[str, Any] = dict(image=None, text=None, contrastive=None, decoder=None, fusion=None)


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """x / ||x|| over the last axis, in float32."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def temperature_param(module: nn.Module, scale_init: float) -> jax.Array:
  """Param t = log(logit scale): learned in log space so the scale stays positive."""
  return module.param("t", partitioned(nn.initializers.constant(math.log(scale_init)), ()), (), jnp.float32)


def clamp_log_scale(params: dict, max_scale: float) -> dict:
  """params with t (log logit scale) clipped to [0, log max_scale]: the last step of every update, as
  CLIP's `logit_scale.clamp_(0, ln 100)`. The forward pass uses exp(t) as it is: a clamp inside it
  would have zero gradient above the cap, and a scale that crossed it could never come back."""
  if "t" not in params:  # frozen, or a model without a learned temperature
    return params
  return {**params, "t": jnp.clip(params["t"], 0.0, math.log(max_scale))}


@register_model("composable")
class Composable(nn.Module):
  """Params: img (ViT, no head); with the contrastive head txt (text tower, no head), [img_proj,]
  [txt_proj,] t[, b][, img_pool]; with the decoder dec[, dec_embed][, mask_embedding][, memory_pool]; with
  the fusion head itm_head, enc_token, mlm_mask_token[, fusion_embed, fusion_encoder] (share="none"; with
  share="blip" its self-attention is enc_attn in each of dec's blocks)."""
  img: ViT
  txt: TextTransformer | None = None
  contrastive: dict[str, Any] | None = None
  text: dict[str, Any] | None = None  # the decoder's text_settings() + mode, parallel_fraction, memory_queries
  module_kw: dict[str, Any] | None = None
  fusion: dict[str, Any] | None = None  # the image-grounded text encoder's settings (vljax/models/fusion.py)

  capabilities = frozenset({EMBEDDINGS, GENERATION, LIKELIHOOD, IMAGE_FEATURES, MATCHING})  # of some configuration
  inputs = ("image", "text")
  output_names = frozenset({"img_emb", "img_tokens", "txt_emb", "txt_tokens", "logit_scale", "logit_bias",
                            "memory", "caption_logits", "fusion_memory"})
  output_settings = {"logit_bias": "model.contrastive.logit_bias_init (SigLIP: -10.0)",
                     "img_emb": "model.contrastive=dict(...) and model.text", "txt_emb": "model.contrastive=dict(...)",
                     "logit_scale": "model.contrastive=dict(...)", "caption_logits": "model.decoder=dict(variant=...)",
                     "fusion_memory": "model.fusion=dict(share='none', variant=...) or dict(share='blip')"}
  # "mask": which examples get parallel prediction; "patch_dropout": the patches the ViT keeps (FLIP).
  rng_streams = ("dropout", "mask", PATCH_DROPOUT_STREAM)

  def active_capabilities(self) -> frozenset[str]:
    return frozenset({IMAGE_FEATURES} | ({EMBEDDINGS} if self.contrastive else set()) |
                     ({GENERATION, LIKELIHOOD} if self.text else set()) | ({MATCHING} if self.fusion else set()))

  def training_outputs(self) -> frozenset[str]:
    out = {"img_tokens"}
    if self.contrastive:
      out |= {"img_emb", "txt_emb", "txt_tokens", "logit_scale"}
      if self.contrastive["logit_bias_init"] is not None:
        out.add("logit_bias")
    if self.text:
      out |= {"memory", "caption_logits"}
    if self.fusion:
      out.add("fusion_memory")
    return frozenset(out)

  def setup(self):
    kw = dict(self.module_kw or {})
    dtypes = model_config.dtypes(kw)
    pool_kw = dict(attention_impl=kw.get("attention_impl"), **dtypes)
    if self.contrastive:
      c = self.contrastive
      if c["image_pool"] == "map":
        self.img_pool = MAPHead(self.img.num_heads, self.img.mlp_dim, num_queries=1, **pool_kw)
      if c["image_proj"]:
        self.img_proj = layers.dense(c["embed_dim"], ("embed", None), name="img_proj",
                                     use_bias=c["image_proj_bias"], **dtypes)
      if c["text_proj"]:
        self.txt_proj = layers.dense(c["embed_dim"], ("embed", None), name="txt_proj",
                                     use_bias=c["text_proj_bias"], **dtypes)
      self.t = temperature_param(self, c["logit_scale_init"])
      if c["logit_bias_init"] is not None:
        self.b = self.param("b", partitioned(nn.initializers.constant(c["logit_bias_init"]), ()), (), jnp.float32)
    if self.text:
      t = self.text
      if t["input"] == "embed":
        self.dec_embed = TokenEmbedding(t["vocab_size"], t["width"], t["max_len"], **dtypes)
      if t["mode"] == "parallel":
        self.mask_embedding = self.param("mask_embedding", partitioned(nn.initializers.normal(0.02), ("embed",)),
                                         (t["width"],), dtypes["param_dtype"])
      if t["memory_queries"]:
        self.memory_pool = MAPHead(self.img.num_heads, self.img.mlp_dim, num_queries=t["memory_queries"], **pool_kw)
      blip = bool(self.fusion) and self.fusion["share"] == "blip"
      self.dec = CrossDecoder(t["depth"], t["mlp_dim"], t["num_heads"], t["vocab_size"], activation=t["activation"],
                              norm_eps=t["norm_eps"], norm_position=t["norm_position"],
                              head_transform=t["head_transform"], encoder_branch=blip, **kw)
    if self.fusion:
      self._setup_fusion(kw, dtypes)

  def _setup_fusion(self, kw: dict[str, Any], dtypes: dict[str, Any]) -> None:
    f = self.fusion
    if f["share"] == "none":
      self.fusion_embed = TokenEmbedding(f["vocab_size"], f["width"], f["max_len"], **dtypes)
      self.fusion_encoder = layers.Transformer(f["depth"], f["mlp_dim"], f["num_heads"], cross_attention=True,
                                               activation=f["activation"], norm_eps=f["norm_eps"],
                                               norm_position=f["norm_position"], **kw)
    # [ENC] and [MASK] are learned rows, not tokenizer ids: every tokenizer serves the head unchanged.
    token_init = partitioned(nn.initializers.normal(0.02), ("embed",))
    self.enc_token = self.param("enc_token", token_init, (f["width"],), dtypes["param_dtype"])
    self.mlm_mask_token = self.param("mlm_mask_token", token_init, (f["width"],), dtypes["param_dtype"])
    self.itm_head = layers.dense(2, ("embed", None), name="itm_head", **dtypes)

  def encode_image(self, image: jax.Array, train: bool = False, mask: jax.Array | None = None
                   ) -> dict[str, jax.Array]:
    """mask [B, N]: patches the ViT replaces with its mask token (objectives.masked_prediction)."""
    pooled, tokens = self.img(image, train=train) if mask is None else self.img(image, train=train, mask=mask)
    out = {"img_tokens": tokens}
    if self.text:
      out["memory"] = self.memory_pool(tokens) if self.text["memory_queries"] else tokens
    if self.contrastive:
      c = self.contrastive
      if c["image_pool"] == "map":
        pooled = self.img_pool(out["memory"] if c["image_pool_input"] == "memory" else tokens)[:, 0]
      out["img_emb"] = l2_normalize(self.img_proj(pooled) if c["image_proj"] else pooled)
    return out

  def encode_text(self, ids: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    pooled, tokens = self.txt(ids, train=train)
    return {"txt_emb": l2_normalize(self.txt_proj(pooled) if self.contrastive["text_proj"] else pooled),
            "txt_tokens": tokens}

  def caption_logits(self, memory: jax.Array, ids: jax.Array) -> jax.Array:
    """Teacher-forced logits [B, L, vocab] of ids [B, L] given the image memory."""
    if self.text["input"] == "text_tower":  # the tower's token rows, without the [CLS] it may append
      return self.dec(self.txt(ids, tokens_only=True)[1], memory, causal_mask(ids.shape[1]))
    return self.dec(self.dec_embed(ids), memory, causal_mask(ids.shape[1]))

  def decode_step(self, ids: jax.Array, memory: jax.Array | None, decode_index: jax.Array) -> jax.Array:
    """Logits of ids [B, T] at positions decode_index.. with the KV caches (the text tower's, then the
    decoder's, when the decoder continues from the tower)."""
    if self.text["input"] == "text_tower":
      x = self.txt(ids, decode_index=decode_index)[1]
    else:
      x = self.dec_embed(ids, decode_index)
    return self.dec(x, memory, decode_index=decode_index)

  def fusion_hidden(self, image_tokens: jax.Array, ids: jax.Array, masked: jax.Array | None = None) -> jax.Array:
    """The image-grounded text encoder: ids [B, L] with [ENC] in place of the first token (BLIP replaces
    [CLS]) and [MASK] where `masked` [B, L] -> hidden [B, L, W], bidirectional over the real tokens,
    cross-attending to image_tokens [B, N, D]."""
    f = self.fusion
    embed = self.dec_embed if f["share"] == "blip" else self.fusion_embed
    x = embed.tokens(ids)
    x = jnp.where((jnp.arange(ids.shape[1]) == 0)[None, :, None], self.enc_token.astype(x.dtype), x)
    if masked is not None:
      x = jnp.where(masked[..., None], self.mlm_mask_token.astype(x.dtype), x)
    x = embed.add_positions(x)
    keys = (ids != f["pad_id"])[:, None, None, :]
    if f["share"] == "blip":
      return self.dec(x, image_tokens, keys, encode=True)
    return self.fusion_encoder(x, keys, image_tokens)

  def itm_logits(self, image_tokens: jax.Array, ids: jax.Array) -> jax.Array:
    """float32 [B, 2] (no match, match) of each (image tokens, text) pair, read off the [ENC] row."""
    return self.itm_head(self.fusion_hidden(image_tokens, ids)[:, 0]).astype(jnp.float32)

  def mlm_logits(self, image_tokens: jax.Array, ids: jax.Array, masked: jax.Array) -> jax.Array:
    """float32 [B, L, vocab]: the fusion encoder's token outputs through the tied token embedding."""
    embed = self.dec_embed if self.fusion["share"] == "blip" else self.fusion_embed
    return vocab_logits(embed.attend, self.fusion_hidden(image_tokens, ids, masked))

  def _train_caption_logits(self, memory: jax.Array, ids: jax.Array) -> jax.Array:
    """Parallel prediction (CapPa): a parallel_fraction of the examples get all-[MASK] inputs and no
    causal mask, so the decoder must read every token off the image."""
    batch, length = ids.shape
    parallel = jax.random.bernoulli(self.make_rng("mask"), self.text["parallel_fraction"], (batch,))
    x = self.dec_embed(ids, replace=parallel, replacement=self.mask_embedding)
    return self.dec(x, memory, causal_mask(length) | parallel[:, None, None, None])

  def __call__(self, image: jax.Array | None = None, text: jax.Array | None = None,
               train: bool = False) -> dict[str, jax.Array]:
    out = {} if image is None else self.encode_image(image, train)
    if text is not None and self.contrastive:
      out.update(self.encode_text(text, train))
    if image is not None and text is not None and self.text:
      parallel = train and self.text["mode"] == "parallel" and self.text["parallel_fraction"] > 0
      if self.text["input"] == "text_tower":  # one text-tower pass serves both heads (it is causal)
        out["caption_logits"] = self.dec(out["txt_tokens"], out["memory"], causal_mask(text.shape[1]))
      else:
        out["caption_logits"] = (self._train_caption_logits if parallel else self.caption_logits)(out["memory"],
                                                                                                   text)
    if image is not None and self.fusion:
      out["fusion_memory"] = out["img_tokens"]  # what the fusion head cross-attends to, when objectives run it
      if text is not None and self.is_initializing():  # its passes run from objectives: create its params here
        self.mlm_logits(out["fusion_memory"], text, jnp.zeros(text.shape, bool))
        self.itm_logits(out["fusion_memory"], text)
    if self.contrastive:
      out["logit_scale"] = jnp.exp(self.t)  # clamped after each update (clamp_log_scale)
      if self.contrastive["logit_bias_init"] is not None:
        out["logit_bias"] = self.b
    return out

  @property
  def max_logit_scale(self) -> float | None:
    """The cap the train step clamps exp(t) to after each update (none without a contrastive head)."""
    return self.contrastive["max_logit_scale"] if self.contrastive else None

  @classmethod
  def from_config(cls, cfg: dict[str, Any]) -> "Composable":
    c = resolve_config(cfg)
    kw = model_config.module_kwargs(c)
    txt = TextTransformer(**c["text"], **kw) if c["contrastive"] else None
    return cls(img=naflex.make_tower(c["image"], kw), txt=txt, contrastive=c["contrastive"], text=c["decoder"],
               module_kw=kw, fusion=c["fusion"])

  @classmethod
  def flop_parts(cls, cfg: dict[str, Any], inputs: flops.Inputs,
                 passes: dict[str, float] | None = None) -> list[flops.Part]:
    """Forward FLOPs by part (vljax/models/flops.py), in the order of the figure above (the memory
    pooler first: image_pool_input="memory" reads it); then the fusion head's passes that objectives
    run, `passes` (method -> runs per example: itm_logits, mlm_logits)."""
    c = resolve_config(cfg)
    img, scan, length, d = c["image"], c["scan"], inputs.text_len, c["decoder"]
    n, dv = flops.encoder_tokens(img, inputs.image_size) + img["cls_in_tokens"], img["width"]
    parts, tokens = flops.vit_parts(img, inputs.image_size, "img", scan=scan)
    pooled, memory = parts[-1].name, (tokens, n, dv)
    if d and d["memory_queries"]:
      parts.append(flops.attention_pool("memory_pool", d["memory_queries"], n, dv, img["mlp_dim"], tokens))
      memory = ("memory_pool", d["memory_queries"], dv)
    if c["contrastive"]:
      parts += _contrastive_parts(c, length, pooled, tokens, n, memory)
    if d:
      reads = "txt/encoder/encoder_norm"  # the text tower's token outputs (input="text_tower")
      if d["input"] == "embed":
        parts.append(flops.Part("dec_embed", ("dec_embed", "mask_embedding"), reads={"text": 0.0}))
        reads = "dec_embed"
      parts += flops.encoder("dec/decoder", d["depth"], length, d["width"], d["mlp_dim"], reads, scan, memory)
      if d["head_transform"]:
        parts.append(flops.linear("dec/head_transform", 2 * length * d["width"] ** 2, parts[-1].name))
      parts.append(flops.linear("dec/logits", 2 * length * d["width"] * d["vocab_size"], parts[-1].name))
    for method, runs in (passes or {}).items():
      parts += flops.further_pass(method, _fusion_pass_parts(c, method, length, memory=(tokens, n, dv)), runs)
    return parts


def _contrastive_parts(c: dict[str, Any], length: int, pooled: str, tokens: str, n: int,
                       memory: tuple[str, int, int]) -> list[flops.Part]:
  """The contrastive head's parts: image pooler and projection, text tower and projection."""
  h, img, e = c["contrastive"], c["image"], c["contrastive"]["embed_dim"]
  parts = []
  if h["image_pool"] == "map":
    source, keys, _ = memory if h["image_pool_input"] == "memory" else (tokens, n, None)
    parts.append(flops.attention_pool("img_pool", 1, keys, img["width"], img["mlp_dim"], source))
    pooled = "img_pool"
  if h["image_proj"]:
    parts.append(flops.linear("img_proj", 2 * img["width"] * e, pooled))
  text = flops.text_parts(c["text"], length, "txt", scan=c["scan"])
  if h["text_proj"]:
    text.append(flops.linear("txt_proj", 2 * c["text"]["width"] * e, text[-1].name))
  return parts + text


FUSION_PASSES = ("itm_logits", "mlm_logits")  # the fusion head's methods objectives run (ModelAccess.apply)


def _fusion_pass_parts(c: dict[str, Any], method: str, length: int, memory: tuple[str, int, int]
                       ) -> list[flops.Part]:
  """One pass of the image-grounded text encoder over `length` ids, cross-attending to the ViT
  tokens, and its head: ITM's 2 logits off the [ENC] row, or MLM's tied vocabulary logits on every row."""
  f = c["fusion"]
  if not f or method not in FUSION_PASSES:
    raise flops.UncountedPass(f"composable model declares no FLOP count for a pass of method {method!r}; "
                              f"valid: {list(FUSION_PASSES) if f else 'none without model.fusion'}")
  blip, w = f["share"] == "blip", f["width"]
  embed, prefix = ("dec_embed", "dec/decoder") if blip else ("fusion_embed", "fusion_encoder")
  tokens = ("enc_token", "mlm_mask_token") if method == "mlm_logits" else ("enc_token",)
  parts = [flops.Part("fusion_embed", (embed,) + tokens, reads={"text": 0.0})]
  parts += flops.encoder(prefix, f["depth"], length, w, f["mlp_dim"], parts[0].name, c["scan"], memory)
  if method == "itm_logits":
    return parts + [flops.linear("itm_head", 2 * w * 2, parts[-1].name)]
  head = 2 * length * w * f["vocab_size"]  # the token embedding, tied
  return parts + [flops.Part("mlm_logits", (embed,), dense=float(head), reads={parts[-1].name: float(head)})]


def resolve_config(cfg: dict[str, Any]) -> dict[str, Any]:
  """Validated settings with every default filled: image/text become tower settings (their heads
  off), contrastive/decoder their dicts or None."""
  for tower in ("image", "text"):
    heads = sorted({"head", "head_bias"} & set(cfg.get(tower) or {}))
    if heads:
      raise ValueError(f"composable model.{tower} takes no {heads}: the projection is the contrastive head's, "
                       f"model.contrastive.{tower}_proj and {tower}_proj_bias")
  image, naflex_settings = naflex.split_config(cfg.get("image"))  # model.image.naflex: vljax/models/naflex.py
  c = model_config.resolve("composable", {**cfg, "image": image} if "image" in cfg else cfg, COMPOSABLE_DEFAULTS,
                           {"image": vit_settings})
  c["image"]["head"] = False
  if not c["contrastive"] and not c["decoder"]:
    raise ValueError("composable model needs a head: model.contrastive=dict(...) and/or "
                     "model.decoder=dict(variant=...)")
  if c["contrastive"]:
    _resolve_contrastive(c)
  elif c["text"]:
    raise ValueError("composable model.text is the contrastive text tower: with no model.contrastive it would be "
                     "unused; drop it (the decoder's settings are model.decoder)")
  if c["decoder"]:
    _resolve_decoder(c)
  if c["fusion"]:
    resolve_fusion(c)
  if naflex_settings is not None:
    naflex.check_composable(c)
    c["image"]["naflex"] = naflex_settings
  if c["image"]["pool"] == "map" and (not c["contrastive"] or c["contrastive"]["image_pool"] == "map"):
    model_config.check_image_tokens_only("composable (decoder only, or contrastive.image_pool='map')", c["image"])
  return c


def _resolve_contrastive(c: dict[str, Any]) -> None:
  given = c["contrastive"]
  h = c["contrastive"] = _settings("contrastive", given, CONTRASTIVE_DEFAULTS)
  check_choice("contrastive.image_pool", h["image_pool"], IMAGE_POOLS)
  if not c["text"]:
    raise ValueError("composable model.contrastive needs a text tower: model.text=dict(variant=...)")
  c["text"] = dict(text_settings(**c["text"]), head=False)
  if h["logit_scale_init"] <= 0 or not math.isfinite(h["logit_scale_init"]):
    raise ValueError(f"contrastive.logit_scale_init={h['logit_scale_init']} must be > 0")
  check_choice("contrastive.image_pool_input", h["image_pool_input"], IMAGE_POOL_INPUTS)
  if h["image_pool_input"] == "memory" and (h["image_pool"] != "map" or not (c["decoder"] or {}).get("memory_queries")):
    raise ValueError(f"contrastive.image_pool_input='memory' makes the MAP pooler read the decoder's memory pooler "
                     f"(CoCa's cascade): it needs image_pool='map' (got {h['image_pool']!r}) and "
                     f"model.decoder=dict(..., memory_queries=N >= 1)")
  for tower, width in (("image", c["image"]["width"]), ("text", c["text"]["width"])):
    for key in (f"{tower}_proj", f"{tower}_proj_bias"):
      if not isinstance(h[key], bool):
        raise ValueError(f"contrastive.{key}={h[key]!r} must be True or False")
    if not h[f"{tower}_proj"] and f"{tower}_proj_bias" in given:
      raise ValueError(f"contrastive.{tower}_proj_bias is the bias of a projection that {tower}_proj=False drops")
    if not h[f"{tower}_proj"] and width != h["embed_dim"]:
      raise ValueError(f"contrastive.{tower}_proj=False makes the {tower} width {width} the embedding, but "
                       f"contrastive.embed_dim is {h['embed_dim']}; set embed_dim={width} or {tower}_proj=True")


def _resolve_decoder(c: dict[str, Any]) -> None:
  d = dict(c["decoder"])
  own = {k: d.pop(k) for k in list(d) if k in DECODER_DEFAULTS}
  if "variant" not in d:
    raise ValueError(f"composable model.decoder needs variant=..., got {c['decoder']!r}")
  t = c["decoder"] = dict(text_settings(**d), causal=True, **_settings("decoder", own, DECODER_DEFAULTS))
  check_choice("decoder.mode", t["mode"], DECODER_MODES)
  check_choice("decoder.input", t["input"], DECODER_INPUTS)
  if not 0.0 <= t["parallel_fraction"] <= 1.0:
    raise ValueError(f"decoder.parallel_fraction={t['parallel_fraction']} must be in [0, 1]")
  if t["memory_queries"] < 0:
    raise ValueError(f"decoder.memory_queries={t['memory_queries']} must be >= 0 (0: the ViT tokens)")
  if t["input"] == "text_tower":
    _check_shared_text(c["text"] if c["contrastive"] else None, t)


def _check_shared_text(text: dict[str, Any] | None, dec: dict[str, Any]) -> None:
  """decoder.input='text_tower' continues from the contrastive text tower's tokens (CoCa)."""
  if text is None:
    raise ValueError("decoder.input='text_tower' continues from the contrastive text tower: it needs "
                     "model.contrastive and model.text, or decoder.input='embed'")
  if not text["causal"]:
    raise ValueError("decoder.input='text_tower' needs a causal text tower (a caption token must not see the "
                     "next ones): set text.causal=True, or decoder.input='embed'")
  if dec["mode"] != "autoregressive":
    raise ValueError(f"decoder.mode={dec['mode']!r} replaces the decoder's input embeddings with [MASK]; "
                     f"with decoder.input='text_tower' the only valid mode is 'autoregressive'")
  for key in ("width", "vocab_size"):
    if text[key] != dec[key]:
      raise ValueError(f"decoder.input='text_tower': decoder {key}={dec[key]} must equal text {key}={text[key]}")


def _settings(name: str, given: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise ValueError(f"composable model.{name}: unknown key(s) {unknown}; valid: {sorted(defaults)}")
  return dict(defaults, **given)
