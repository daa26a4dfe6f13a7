"""Decoder-only language model with the options of pretrained families: GPT-2, OPT and Llama / Mistral / Qwen2.

  ids -> token embedding [+ learned positions] -> depth x pre-norm block -> final norm -> vocab logits
  block: x + out(attention(rope?(q), rope?(k), v)) over norm(x); x + mlp(norm(x))

Settings (SETTINGS): norm layernorm|rmsnorm with its epsilon, positions learned|rope (theta), grouped-query
attention (num_kv_heads < num_heads; equal is multi-head), q/k/v and output biases, MLP gelu|gelu_tanh|relu|
swiglu, tied or untied vocabulary head, new_token_ids. The `lm` model builds it for a config
`lm=dict(...)` or `lm="hf:DIR"` (vljax/models/lm.py), and LLaVA for its own `lm` key; vljax/convert/hf_lm.py
imports Hugging Face checkpoints into it. Its own file, not options of layers.Transformer: that is every text
tower's and ViT's stack, where these branches would serve no tower.

Parameter names follow LanguageModel's (txt, lm/block_i, lm/encoder_norm, logits) so that image-conditioned
models can hold either. Keys get no bias where positions are learned: q.b_k is the same for every key of a
query and softmax cancels it (layers.MultiHeadAttention drops it for the same reason); under RoPE the key
is rotated after the bias, so there it is kept.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.ad_checkpoint import checkpoint_name

from vljax.models import flops, layers, model_config
from vljax.models.layers import ACT, Dtype, EinsumDense, check_choice, partitioned

NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope")
MLPS = {"gelu": layers.ACTIVATIONS["gelu"], "gelu_tanh": layers.ACTIVATIONS["gelu_tanh"], "relu": nn.relu,
        "swiglu": nn.silu}  # swiglu: silu(gate(x)) * fc1(x)
REQUIRED = ("vocab_size", "width", "depth", "num_heads", "mlp_dim", "max_len")
SETTINGS: dict[str, Any] = dict(  # the `lm` setting's keys and defaults
    **{k: None for k in REQUIRED},
    num_kv_heads=None,  # None: num_heads (multi-head attention)
    head_dim=None,  # None: width // num_heads
    norm="layernorm", norm_eps=1e-5, positions="learned", rope_theta=10_000.0, mlp="gelu",
    qkv_bias=False, out_bias=False, mlp_bias=False, tie_embeddings=False,
    new_token_ids=(),  # ids whose input and output rows are the separate params txt/new_tokens (and
    # logits/new_tokens): tokens a pretrained LM lacks ("<image>", "<eoc>"), trainable while `frozen` holds the rest
    source=None)  # where the weights came from (an import's folder): a note, no effect on the model


def norm(kind: str, eps: float, name: str, dtype: Dtype, param_dtype: Dtype) -> nn.Module:
  """LayerNorm or RMSNorm (scale only), statistics in float32, scale (and bias) named ("embed",)."""
  if kind == "layernorm":
    return layers.layer_norm(name=name, dtype=dtype, param_dtype=param_dtype, epsilon=eps)
  return nn.RMSNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name, force_float32_reductions=True,
                    scale_init=partitioned(nn.initializers.ones, ("embed",)))


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotary position embedding of x [B, L, heads, head_dim] at positions [B or 1, L], in the half-split
  layout of Llama's Hugging Face weights (dimension i pairs with i + head_dim / 2)."""
  half = x.shape[-1] // 2
  inv_freq = 1.0 / theta ** (jnp.arange(half, dtype=jnp.float32) * 2 / x.shape[-1])
  angles = positions.astype(jnp.float32)[..., None, None] * inv_freq  # [B, L, 1, half]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class Attention(nn.Module):
  """Causal self-attention with num_kv_heads key/value heads shared by num_heads // num_kv_heads query heads
  each; the KV cache (layers.cached_self_kv) holds the num_kv_heads heads."""
  num_heads: int
  num_kv_heads: int
  head_dim: int
  qkv_bias: bool = False
  out_bias: bool = False
  rope_theta: float | None = None  # None: no rotation (learned positions are added to the input)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array, decode_index: jax.Array | None = None) -> jax.Array:
    width = x.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def proj(name, heads, bias):  # [B, L, width] -> [B, L, heads, head_dim]
      return EinsumDense("bld,dhk->blhk", (width, heads, self.head_dim), ("embed", "heads", "kv"),
                         fan_axes=((0,), (1, 2)), use_bias=bias, name=name, **kw)(x)

    q = proj("query", self.num_heads, self.qkv_bias)
    k = proj("key", self.num_kv_heads, self.qkv_bias and self.rope_theta is not None)
    v = proj("value", self.num_kv_heads, self.qkv_bias)
    if self.rope_theta is not None:
      q, k = rope(q, positions, self.rope_theta), rope(k, positions, self.rope_theta)
    q, k, v = checkpoint_name(q, "query"), checkpoint_name(k, "key"), checkpoint_name(v, "value")
    mask, is_causal = None, True
    if decode_index is not None:
      k, v, mask = layers.cached_self_kv(self, k, v, None, decode_index)
      is_causal = False  # the cache's mask is causal
    groups = self.num_heads // self.num_kv_heads
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    out = layers.attention(q, k, v, mask, is_causal, self.attention_impl)
    out = EinsumDense("blhk,hkd->bld", (self.num_heads, self.head_dim, width), ("heads", "kv", "embed"),
                      fan_axes=((0, 1), (2,)), use_bias=self.out_bias, name="out", **kw)(out)
    return checkpoint_name(out, "attention_out")


class Mlp(nn.Module):
  """fc1 -> activation -> fc2; swiglu: fc2(silu(gate(x)) * fc1(x))."""
  mlp_dim: int
  kind: str = "gelu"
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=self.use_bias)
    up = layers.dense(self.mlp_dim, ("embed", "mlp"), name="fc1", **kw)(x)
    if self.kind == "swiglu":
      h = MLPS["swiglu"](layers.dense(self.mlp_dim, ("embed", "mlp"), name="gate", **kw)(x)) * up
    else:
      h = MLPS[self.kind](up)
    h = checkpoint_name(nn.with_logical_constraint(h, ("batch", "length", "mlp")), "mlp_hidden")
    return checkpoint_name(layers.dense(x.shape[-1], ("mlp", "embed"), name="fc2", **kw)(h), "mlp_out")


class Block(nn.Module):
  """Pre-norm decoder block: x + attn(ln1(x)), then x + mlp(ln2(x))."""
  s: dict[str, Any]  # checked settings (language_settings)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array, decode_index: jax.Array | None) -> tuple[jax.Array, None]:
    s, kw = self.s, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.with_logical_constraint(x, ACT)
    theta = s["rope_theta"] if s["positions"] == "rope" else None
    y = norm(s["norm"], s["norm_eps"], "ln1", **kw)(x)
    x = x + Attention(s["num_heads"], s["num_kv_heads"], s["head_dim"], s["qkv_bias"], s["out_bias"], theta,
                      attention_impl=self.attention_impl, name="attn", **kw)(y, positions, decode_index)
    y = norm(s["norm"], s["norm_eps"], "ln2", **kw)(x)
    x = x + Mlp(s["mlp_dim"], s["mlp"], s["mlp_bias"], name="mlp", **kw)(y)
    return nn.with_logical_constraint(x, ACT), None


class DecoderStack(nn.Module):
  """depth Blocks (looped, or nn.scan'ed as "layers"; optionally remat'ed) + the final norm "encoder_norm"."""
  s: dict[str, Any]
  scan: bool = False
  remat: str = "none"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array, decode_index: jax.Array | None = None) -> jax.Array:
    kw = dict(s=self.s, dtype=self.dtype, param_dtype=self.param_dtype, attention_impl=self.attention_impl)
    block_cls = Block
    if self.remat != "none":
      block_cls = nn.remat(Block, prevent_cse=not self.scan, policy=layers.REMAT_POLICIES[self.remat])
    if self.scan:  # the cache stacks layers on axis 1: every cache leaf keeps batch on axis 0
      stack = nn.scan(block_cls, variable_axes={"params": 0, "cache": 1}, split_rngs={"params": True},
                      in_axes=nn.broadcast, length=self.s["depth"], metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = stack(name="layers", **kw)(x, positions, decode_index)
    else:
      for i in range(self.s["depth"]):
        x, _ = block_cls(name=f"block_{i}", **kw)(x, positions, decode_index)
    return norm(self.s["norm"], self.s["norm_eps"], "encoder_norm", self.dtype, self.param_dtype)(x)


def new_rows(module: nn.Module, new_ids: tuple[int, ...], width: int, param_dtype: Dtype) -> jax.Array | None:
  """The module's "new_tokens" param [len(new_ids), width], or None without new ids."""
  if not new_ids:
    return None
  return module.param("new_tokens", partitioned(nn.initializers.normal(0.02), (None, "embed")),
                      (len(new_ids), width), param_dtype)


def with_new_logits(logits: jax.Array, x: jax.Array, new_ids: tuple[int, ...], rows: jax.Array | None) -> jax.Array:
  """logits [..., V] with the columns of new_ids computed from their own rows [n, D] instead."""
  if rows is None:
    return logits
  new = jnp.einsum("...d,nd->...n", x, rows.astype(x.dtype)).astype(logits.dtype)
  return logits.at[..., jnp.asarray(new_ids)].set(new)


class LayerByLayer(nn.Module):
  """DecoderStack's blocks one at a time, for models that put layers of their own between them (Flamingo's
  gated cross-attention); the same param names as DecoderStack(scan=False)."""
  s: dict[str, Any]
  remat: str = "none"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str | None = None

  def setup(self):
    block_cls = Block
    if self.remat != "none":
      block_cls = nn.remat(Block, policy=layers.REMAT_POLICIES[self.remat])
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.block = [block_cls(self.s, attention_impl=self.attention_impl, **kw) for _ in range(self.s["depth"])]
    self.encoder_norm = norm(self.s["norm"], self.s["norm_eps"], "encoder_norm", **kw)

  def layer(self, i: int, x: jax.Array, positions: jax.Array, decode_index: jax.Array | None) -> jax.Array:
    return self.block[i](x, positions, decode_index)[0]

  def final_norm(self, x: jax.Array) -> jax.Array:
    return self.encoder_norm(x)


class Embedding(nn.Module):
  """Token table "embedding" [+ learned position table "posemb"] [+ "new_tokens", the rows of new_ids];
  `attend` is the tied vocabulary head."""
  vocab_size: int
  width: int
  max_len: int
  learned_positions: bool
  new_ids: tuple[int, ...] = ()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    self.embedding = nn.Embed(self.vocab_size, self.width, dtype=self.dtype, param_dtype=self.param_dtype,
                              embedding_init=partitioned(nn.initializers.normal(0.02), ("vocab", "embed")))
    if self.learned_positions:
      self.posemb = layers.LearnedPosEmb(self.max_len, self.param_dtype)
    self.new_tokens = new_rows(self, self.new_ids, self.width, self.param_dtype)

  def tokens(self, ids: jax.Array) -> jax.Array:
    x = self.embedding(ids)
    if self.new_tokens is None:
      return x
    match = ids[..., None] == jnp.asarray(self.new_ids)  # [B, L, n]: at most one true
    new = jnp.einsum("bln,nd->bld", match.astype(x.dtype), self.new_tokens.astype(x.dtype))
    return jnp.where(match.any(-1)[..., None], new, x)

  def add_positions(self, x: jax.Array, offset: jax.Array | int = 0) -> jax.Array:
    """Learned rows offset..offset+L-1 added to x [B, L, D]; RoPE models rotate inside attention instead."""
    return self.posemb(x, offset) if self.learned_positions else x

  def attend(self, x: jax.Array) -> jax.Array:
    return with_new_logits(self.embedding.attend(x), x, self.new_ids, self.new_tokens)


class Head(nn.Module):
  """Untied vocabulary head: kernel [D, V] (no bias) [+ "new_tokens", the rows of new_ids]."""
  vocab_size: int
  new_ids: tuple[int, ...] = ()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", partitioned(layers.default_kernel_init, ("embed", "vocab")),
                        (x.shape[-1], self.vocab_size), self.param_dtype)
    x = x.astype(self.dtype)
    logits = jnp.einsum("...d,dv->...v", x, kernel.astype(self.dtype))
    return with_new_logits(logits, x, self.new_ids, new_rows(self, self.new_ids, x.shape[-1], self.param_dtype))


class CausalLM(nn.Module):
  """Params: txt (embedding [, posemb] [, new_tokens]), lm (blocks + encoder_norm), logits (absent when tied).
  The `lm` model's module for a config with `lm` settings (vljax/models/lm.py)."""
  text: dict[str, Any]  # language_settings(): the architecture, in the place of lm's text tower settings
  module_kw: dict[str, Any] | None = None
  capabilities = frozenset()  # text only: nothing an image evaluator can use
  inputs = ("text",)
  output_names = frozenset({"caption_logits"})
  rng_streams = ("dropout",)

  def setup(self):
    self.txt, self.lm, head = language_modules(self.text, self.module_kw)
    if head is not None:
      self.logits = head

  def run(self, x: jax.Array, decode_index: jax.Array | None = None) -> jax.Array:
    """Embedded tokens [B, L, D] (no positions yet) -> float32 logits [B, L, vocab]; decode_index (scalar or
    [B]): the positions of x's first token, with the KV cache."""
    return head_logits(self, hidden_states(self, x, decode_index))

  def caption_logits(self, memory: jax.Array | None, ids: jax.Array) -> jax.Array:
    del memory  # no image: the captioning models' signature
    return self.run(self.txt.tokens(ids))

  def decode_step(self, ids: jax.Array, memory: jax.Array | None, decode_index: jax.Array) -> jax.Array:
    del memory
    return self.run(self.txt.tokens(ids), decode_index)

  def __call__(self, image: jax.Array | None = None, text: jax.Array | None = None,
               train: bool = False) -> dict[str, jax.Array]:
    """caption_logits of the text (an image is ignored: text-only model)."""
    del image, train
    return {} if text is None else {"caption_logits": self.caption_logits(None, text)}


# ---- the language half of image-conditioned models (LLaVA, Flamingo: their `lm` setting) -------------------
# A parent module sets self.txt, self.lm and (untied) self.logits from language_modules() in its setup, so
# the params keep CausalLM's names and an imported LM's workdir loads into them with init_from.

def language_modules(s: dict[str, Any], module_kw: dict[str, Any] | None) -> tuple[nn.Module, ...]:
  """(txt, lm, logits or None) of causal_lm settings `s`, unnamed: the caller's setup names them."""
  kw = dict(module_kw or {})
  dtypes = model_config.dtypes(kw)
  new_ids = tuple(s["new_token_ids"])
  txt = Embedding(s["vocab_size"], s["width"], s["max_len"], s["positions"] == "learned", new_ids, **dtypes)
  head = None if s["tie_embeddings"] else Head(s["vocab_size"], new_ids, **dtypes)
  return txt, DecoderStack(s, **kw), head


def positions_of(length: int, decode_index: jax.Array | None, max_len: int) -> jax.Array:
  """Positions [B or 1, length] of a sequence whose first token sits at decode_index (0 without the cache)."""
  if length > max_len:
    raise ValueError(f"sequence of {length} positions exceeds the language model's max_len={max_len}")
  offset = 0 if decode_index is None else decode_index
  return jnp.reshape(offset, (-1, 1)) + jnp.arange(length)[None]


def hidden_states(parent: nn.Module, x: jax.Array, decode_index: jax.Array | None = None) -> jax.Array:
  """parent.lm over embedded tokens x [B, L, D] whose first sits at decode_index (0 without the cache)."""
  positions = positions_of(x.shape[1], decode_index, parent.text["max_len"])
  return parent.lm(parent.txt.add_positions(x, 0 if decode_index is None else decode_index), positions,
                   decode_index)


def head_logits(parent: nn.Module, h: jax.Array) -> jax.Array:
  """Hidden states -> float32 logits [B, L, vocab] through parent's tied table or its head."""
  logits = parent.txt.attend(h) if parent.text["tie_embeddings"] else parent.logits(h)
  return nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "vocab"))


def resolve_image_lm(name: str, cfg: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
  """model_config.resolve of an image-conditioned LM (llava, flamingo): with `lm` set, `text` becomes
  the pretrained LM's settings (and must not be given); else `text` is a vljax text tower's, causal."""
  from vljax.models.text import text_settings  # lazy: the towers' settings, only for this
  from vljax.models.vit import vit_settings

  if cfg.get("lm") is not None:
    if cfg.get("text"):
      raise ValueError(f"{name}: lm={cfg['lm']!r} is the language model; text={cfg['text']!r} would be a second "
                       "one; give one of them")
    c = model_config.resolve(name, cfg, defaults, {"image": vit_settings})
    c["text"] = language_settings(c["lm"])
  else:
    c = model_config.resolve(name, cfg, defaults, {"image": vit_settings, "text": text_settings})
    c["text"]["causal"] = True
  return c


def filled_settings(given: Any, defaults: dict[str, Any], required: tuple[str, ...], what: str, hint: str = ""
                    ) -> dict[str, Any]:
  """`given` (a dict of `defaults`' keys) with the defaults filled in; unknown or missing required keys
  are errors naming them (`what`: the setting's name, e.g. "lm")."""
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise ValueError(f"Unknown {what} settings {unknown}; valid: {sorted(defaults)}")
  c = dict(defaults, **given)
  missing = [k for k in required if c[k] is None]
  if missing:
    raise ValueError(f"{what} settings need {missing}{hint}")
  return c


def checked_new_token_ids(c: dict[str, Any], what: str) -> tuple[int, ...]:
  """c["new_token_ids"] as distinct ints in [0, vocab_size), or an error naming them."""
  ids = tuple(int(i) for i in c["new_token_ids"] or ())
  if any(not 0 <= i < c["vocab_size"] for i in ids) or len(set(ids)) != len(ids):
    raise ValueError(f"{what} new_token_ids {list(ids)} must be distinct ids in [0, vocab_size={c['vocab_size']})")
  return ids


def language_settings(value: Any) -> dict[str, Any]:
  """A model's `lm` setting -> every SETTINGS key, checked: "hf:DIR" (a Hugging Face folder, read by
  vljax.convert.hf_lm.lm_settings) or a dict of SETTINGS keys."""
  if isinstance(value, str):
    kind, sep, folder = value.partition(":")
    if kind != "hf" or not sep or not folder:
      raise ValueError(f"lm={value!r}: valid forms are 'hf:/path/to/hf_model_folder' or a dict of {sorted(SETTINGS)}")
    from vljax.convert import hf_lm  # lazy: the converter imports the models package
    value = hf_lm.lm_settings(folder)
  c = filled_settings(value, SETTINGS, REQUIRED, "lm", " (e.g. lm='hf:DIR', or a workdir python -m vljax.convert wrote)")
  check_choice("lm norm", c["norm"], NORMS)
  check_choice("lm positions", c["positions"], POSITIONS)
  check_choice("lm mlp", c["mlp"], MLPS)
  c["num_kv_heads"] = c["num_kv_heads"] or c["num_heads"]
  if c["num_heads"] % c["num_kv_heads"]:
    raise ValueError(f"lm num_heads={c['num_heads']} is not a multiple of num_kv_heads={c['num_kv_heads']}")
  if c["head_dim"] is None:
    if c["width"] % c["num_heads"]:
      raise ValueError(f"lm width {c['width']} is not divisible by num_heads {c['num_heads']}; set head_dim")
    c["head_dim"] = c["width"] // c["num_heads"]
  c["new_token_ids"] = checked_new_token_ids(c, "lm")
  if c["positions"] == "rope" and c["head_dim"] % 2:
    raise ValueError(f"RoPE needs an even head_dim, got {c['head_dim']}")
  return c


def decoder_parts(s: dict[str, Any], length: int, reads: str, scan: bool = False,
                  head_length: int | None = None) -> list[flops.Part]:
  """Forward FLOPs of the blocks over `length` positions of part `reads` (projections at their GQA widths)
  and of the vocabulary head over head_length positions (default all)."""
  parts, last = [], reads
  names = ["lm/layers"] if scan else [f"lm/block_{i}" for i in range(s["depth"])]
  for name in names:
    parts.append(block_part(s, name, length, last, s["depth"] / len(names)))
    last = name
  parts.append(flops.Part("lm/encoder_norm", ("lm/encoder_norm",), reads={last: 0.0}))
  head = "txt" if s["tie_embeddings"] else "logits"
  vocab = float(2 * (length if head_length is None else head_length) * s["width"] * s["vocab_size"])
  return parts + [flops.Part("logits", (head,), vocab, reads={"lm/encoder_norm": vocab})]


def block_part(s: dict[str, Any], name: str, length: int, reads: str, times: float = 1.0) -> flops.Part:
  """One Block over `length` positions of part `reads` (`times` of them: a scanned stack)."""
  n, d, h = length, s["width"], s["head_dim"]
  qkvo = 2 * n * d * h * (2 * s["num_heads"] + 2 * s["num_kv_heads"])
  mlp = 2 * n * d * s["mlp_dim"] * (3 if s["mlp"] == "swiglu" else 2)
  return flops.Part(name, (name,), float(times * (qkvo + mlp)), float(times * 4 * n * n * s["num_heads"] * h),
                    {reads: 0.0})
