"""LLaVA-style projector fusion (Liu et al. 2023): image patch tokens, projected to the language
model's width, take the place of the "<image>" token in its embedding sequence.

  image -> ViT tokens [P, Dv] -> projector (linear | mlp2x_gelu) -> [P, D] --.
  ids "<bos> <image> question: ... answer: red<eoc>"  -> token embeddings --+-> splice -> LM -> logits

The language model keeps LanguageModel's parameter names (txt, lm, logits) and the vision tower
the ViT's (img/...), so both load from earlier runs with init_from. Stage 1 trains only the
projector; stage 2 the projector and the language model (configs/llava_shapes_stage*.py).
Logits come back at the text positions, so the captioning objective and its loss mask apply as
for any captioning model. One image per sequence, its "<image>" anywhere in the text.

projector="qformer" is BLIP-2's stage 2: a Q-Former (vljax/models/qformer.py; settings in `qformer`,
e.g. dict(variant="shapes-64", depth=2, num_queries=8)) reads the image tokens and its query outputs,
through one linear layer (`projector`), are the soft prompt at "<image>" in front of the text. Its
params (qformer/...) load from a stage-1 run (model "qformer", vljax/models/blip2.py) with
init_from.sources=("STAGE1:img,qformer",); its text half is kept, unused, so the trees match: freeze
it (QFORMER_TEXT_HALF in `frozen`), or weight decay alone moves it.

lm="hf:DIR" (or a causal_lm config dict) makes the language half a pretrained LM's architecture (GPT-2, OPT,
Llama, Mistral, Qwen2: vljax/models/causal_lm.py) instead of `text`'s; its weights come from the workdir
`python -m vljax.convert --checkpoint DIR` writes (init_from.sources=("WORKDIR:txt,lm,logits",)), data.tokenizer
must be the folder's ("hf:DIR/tokenizer.json"), and frozen=("txt/(embedding|posemb)/.*", "lm/.*", "logits/kernel")
freezes it all but the rows of the tokens it lacks (txt/new_tokens, logits/new_tokens).
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
from flax import linen as nn

from vljax.models import causal_lm, flops, layers, model_config
from vljax.models.capabilities import GENERATION, IMAGE_FEATURES, PROMPTED
from vljax.models.decoder import TokenEmbedding, causal_mask, encode_and_caption, vocab_logits
from vljax.models.layers import check_choice
from vljax.models.registry import register_model
from vljax.models.qformer import make_qformer, qformer_parts, qformer_settings, text_half
from vljax.models.vit import ViT

PROJECTORS = ("linear", "mlp2x_gelu", "qformer")
# The params of a stage-1 Q-Former's text half, which stage 2 (projector="qformer") never runs.
QFORMER_TEXT_HALF = ("qformer/(embedding|posemb)/.*", r"qformer/encoder/block_\d+/(ln2|mlp)/.*")
LLAVA_DEFAULTS: dict[str, Any] = dict(image=None, text=None, projector="mlp2x_gelu", image_token_id=None,
                                      lm=None, qformer=None)  # projector="qformer": the Q-Former's settings  # "hf:DIR" or a causal_lm dict: a pretrained LM's architecture


class Projector(nn.Module):
  """Vision tokens -> the language model's width: one linear layer, or two with a GELU between."""
  kind: str
  width: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = layers.dense(self.width, ("embed", "mlp"), name="fc1", **kw)(x)
    if self.kind == "mlp2x_gelu":
      x = layers.dense(self.width, ("mlp", "embed"), name="fc2", **kw)(nn.gelu(x))
    return x


def splice(ids: jax.Array, text: jax.Array, image: jax.Array, image_token_id: int
           ) -> tuple[jax.Array, jax.Array]:
  """Put image tokens [B, P, D] where ids [B, L] hold image_token_id; text embeddings [B, L, D].

  Returns (sequence [B, L + P - 1, D], text_positions [B, L]): where each text token's output is;
  the "<image>" token's is the last image token's, which predicts the text after the image.
  """
  _, length = ids.shape
  patches = image.shape[1]
  if text.shape[-1] != image.shape[-1]:
    raise ValueError(f"image tokens of width {image.shape[-1]} cannot replace text tokens of width {text.shape[-1]}")
  at = jnp.argmax(ids == image_token_id, axis=1)[:, None]  # [B, 1]
  t = jnp.arange(length + patches - 1)[None]
  from_image = (t >= at) & (t < at + patches)
  text_src = jnp.clip(jnp.where(t < at, t, t - patches + 1), 0, length - 1)
  text_part = jnp.take_along_axis(text, text_src[..., None], axis=1)
  image_part = jnp.take_along_axis(image.astype(text.dtype), jnp.clip(t - at, 0, patches - 1)[..., None], axis=1)
  i = jnp.arange(length)[None]
  return jnp.where(from_image[..., None], image_part, text_part), jnp.where(i < at, i, i + patches - 1)


def projected_image(module: nn.Module, images: jax.Array, train: bool, name: str) -> jax.Array:
  """images [B, 1, H, W, 3] -> [B, 1, P, D] for a one-image LM (`module`: img, projector_kind, [bridge],
  projector): the image tower's tokens, or the Q-Former's query outputs over them, projected to the
  LM's width."""
  chex.assert_rank(images, 5)
  if images.shape[1] != 1:
    raise ValueError(f"{name} takes one image per sequence, got {images.shape[1]} (images {images.shape})")
  tokens = module.img(images[:, 0], train=train)[1]
  if module.projector_kind == "qformer":
    if module.is_initializing():  # the text half of a stage-1 Q-Former: created, so its params load
      module.bridge(None, jnp.zeros((1, 1), jnp.int32), "text")
    tokens = module.bridge(tokens, None)[0]
  return module.projector(tokens)[:, None]


@register_model("llava")
class LLaVA(nn.Module):
  """Params: img (ViT), projector, txt, lm, logits."""
  img: ViT
  text: dict[str, Any]
  projector_kind: str = "mlp2x_gelu"
  image_token_id: int = -1
  module_kw: dict[str, Any] | None = None
  pretrained_lm: bool = False  # text holds causal_lm settings (config lm=...), not a text tower's
  qformer: dict[str, Any] | None = None  # projector="qformer": its text settings + num_queries, cross_every
  splices_image_tokens = True  # prompts grow by (image tokens - 1): see ModelRunner.generate
  image_prompted = True  # captions and answers continue a text prompt after the image
  # One image per sequence, read only through its <image> token: no plain caption scoring, no few-shot.
  capabilities = frozenset({GENERATION, PROMPTED, IMAGE_FEATURES})
  inputs = ("image", "text")
  output_names = frozenset({"memory", "caption_logits"})  # of the training pass
  rng_streams = ("dropout",)
  needs_image_token = True  # setup fills image_token_id from the tokenizer

  def setup(self):
    kw = dict(self.module_kw or {})
    dtypes = model_config.dtypes(kw)
    t = self.text
    if self.projector_kind == "qformer":
      self.bridge = make_qformer(self.qformer, kw)
    self.projector = Projector("linear" if self.projector_kind == "qformer" else self.projector_kind, t["width"],
                               **dtypes)
    if self.pretrained_lm:
      self.txt, self.lm, head = causal_lm.language_modules(t, kw)
      if head is not None:
        self.logits = head
      return
    self.txt = TokenEmbedding(t["vocab_size"], t["width"], t["max_len"], **dtypes)
    self.lm = layers.Transformer(t["depth"], t["mlp_dim"], t["num_heads"], **kw)
    self.logits = layers.dense(t["vocab_size"], ("embed", "vocab"), name="logits", **dtypes)

  def encode_image(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """images [B, 1, H, W, 3] -> memory [B, 1, P, D]: projected patch tokens."""
    return {"memory": projected_image(self, images, train, "LLaVA")}

  def _check_fits(self, positions: int, text_len: int) -> None:
    if positions > self.text["max_len"]:
      raise ValueError(f"LLaVA: {text_len} text tokens + {positions - text_len} more for the image's tokens = "
                       f"{positions} positions, more than the language model's max_len={self.text['max_len']}; "
                       f"raise model.text.max_len (and the LM run's) or shorten data.max_len")

  def _head(self, x: jax.Array) -> jax.Array:
    return causal_lm.head_logits(self, x) if self.pretrained_lm else vocab_logits(self.logits, x)

  def _language(self, x: jax.Array, decode_index: jax.Array | None = None) -> jax.Array:
    """Hidden states of the language model over embedded tokens x [B, L, D] (positions added here)."""
    if self.pretrained_lm:
      return causal_lm.hidden_states(self, x, decode_index)
    if decode_index is None:
      return self.lm(self.txt.add_positions(x), causal_mask(x.shape[1]))
    return self.lm(self.txt.add_positions(x, decode_index), decode_index=decode_index)

  def caption_logits(self, memory: jax.Array, ids: jax.Array) -> jax.Array:
    """Teacher-forced logits [B, L, vocab] at the text positions of ids (one "<image>" each)."""
    x, text_pos = splice(ids, self.txt.tokens(ids), memory[:, 0], self.image_token_id)
    self._check_fits(x.shape[1], ids.shape[1])
    x = self._language(x)
    return self._head(jnp.take_along_axis(x, text_pos[..., None], axis=1))

  def decode_step(self, ids: jax.Array, memory: jax.Array | None, decode_index: jax.Array) -> jax.Array:
    """KV-cached logits; a call given the memory is the prompt's prefill and splices the image in."""
    x = self.txt.tokens(ids)
    if memory is not None:
      x, text_pos = splice(ids, x, memory[:, 0], self.image_token_id)
      return self._head(jnp.take_along_axis(self._language(x, decode_index), text_pos[..., None], axis=1))
    return self._head(self._language(x, decode_index))

  def __call__(self, image: jax.Array | None = None, text: jax.Array | None = None,
               train: bool = False) -> dict[str, jax.Array]:
    """memory (if image) and caption_logits (if both)."""
    return encode_and_caption(self, image, text, train)

  @classmethod
  def from_config(cls, cfg: dict[str, Any]) -> "LLaVA":
    c = resolve_config(cfg)
    kw = model_config.module_kwargs(c)
    return cls(img=ViT(**c["image"], **kw), text=c["text"], projector_kind=c["projector"],
               image_token_id=c["image_token_id"], module_kw=kw, pretrained_lm=c["lm"] is not None,
               qformer=c["qformer"])

  @classmethod
  def flop_parts(cls, cfg: dict[str, Any], inputs: flops.Inputs) -> list[flops.Part]:
    """Forward FLOPs by part (vljax/models/flops.py): the LM runs over the text with the image's
    tokens spliced in (text_len + tokens - 1 positions); the vocab head over the text positions."""
    c = resolve_config(cfg)
    img, t, length = c["image"], c["text"], inputs.text_len
    parts, tokens = flops.vit_parts(img, inputs.image_size, "img", scan=c["scan"])
    n, dv, d = flops.image_tokens(img, inputs.image_size), img["width"], t["width"]
    if c["projector"] == "qformer":  # the queries read the image tokens; the projector reads the queries
      q = c["qformer"]
      parts.append(flops.Part("qformer/queries", ("qformer/queries",)))
      bridge = qformer_parts(q, "qformer", [(q["num_queries"], 0)], (tokens, n, dv), "qformer/queries")
      parts += bridge + [flops.Part("qformer/encoder/encoder_norm", ("qformer/encoder/encoder_norm",),
                                    reads={bridge[-1].name: 0.0}), text_half(q),
                         flops.linear("projector", 2 * q["num_queries"] * q["width"] * d, "qformer/encoder/encoder_norm")]
      n = q["num_queries"]  # the soft prompt's tokens
    else:
      fc2 = 2 * n * d * d if c["projector"] == "mlp2x_gelu" else 0
      parts.append(flops.Part("projector", ("projector",), float(2 * n * dv * d + fc2),
                              reads={tokens: 2.0 * n * dv * d}))
    parts.append(flops.Part("txt", ("txt",), reads={"text": 0.0}))
    parts.append(flops.Part("splice", reads={"projector": 0.0, "txt": 0.0}))
    if c["lm"] is not None:
      return parts + causal_lm.decoder_parts(t, length + n - 1, "splice", c["scan"], head_length=length)
    return parts + flops.decoder_lm(t, length + n - 1, "splice", scan=c["scan"], head_length=length)


def resolve_config(cfg: dict[str, Any]) -> dict[str, Any]:
  """With lm set, `text` becomes the pretrained LM's causal_lm settings (and must not be given)."""
  return resolve_bridge(causal_lm.resolve_image_lm("llava", cfg, LLAVA_DEFAULTS), "llava", "LLaVA")


def resolve_bridge(c: dict[str, Any], name: str, label: str) -> dict[str, Any]:
  """The image half of a one-image LM's resolved config `c` (LLaVA, prefix_lm), checked: the image
  tower's tokens, the projector (with the Q-Former's settings filled for "qformer"), the <image> id."""
  model_config.check_image_tokens_only(name, c["image"])
  check_choice(f"{label} projector", c["projector"], PROJECTORS)
  if (c["projector"] == "qformer") != (c["qformer"] is not None):
    raise ValueError(f"{name} projector={c['projector']!r} with qformer={c['qformer']!r}: projector='qformer' "
                     "takes qformer=dict(variant=..., num_queries=..., ...) (the Q-Former's settings), and only it does")
  if c["qformer"] is not None:
    c["qformer"] = qformer_settings(c["qformer"])
  if c["image_token_id"] is None:
    raise ValueError(f"{name} config needs image_token_id (the tokenizer's <image> id; the trainer fills it)")
  return c
