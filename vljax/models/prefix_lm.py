"""An image-conditioned encoder-decoder LM (BLIP-2's FlanT5 form, stage 2): the image's soft prompt
and the prompt text go into the encoder, the decoder writes the answer.

  image -> ViT tokens -> Q-Former queries (or the tokens) -> projector -> soft prompt [P, D] --.
  ids "<bos> <image> question: is there a star? answer:"  -> token embeddings -------------+-> splice
       -> T5 encoder ;  decoder: [START] yes<eoc> -> logits (cross-attending the encoder)

The language model is vljax/models/seq2seq_lm.py's (T5, FlanT5; its params txt, encoder, decoder,
logits at the top, so a workdir `python -m vljax.convert --checkpoint FLAN_T5_DIR` wrote loads with
init_from.sources=("WORKDIR:txt,encoder,decoder,logits",)); the bridge is LLaVA's (vljax/models/llava.py):
projector="qformer" with `qformer` settings (params qformer/..., from a stage-1 run), or "linear" /
"mlp2x_gelu" over the image tokens.

Sequences are vljax's chunk format (vljax/data/prompts.py, data.format="vlm"): where a sequence splits
into the encoder's prefix and the decoder's target is its loss mask: the prefix is every token before
the first trained one (the BOS at position 0 left out: T5 has none), the target the rest. Teacher-forced
logits come back at the positions of `ids` (position t predicts ids[t + 1]), so the captioning objective
and its loss mask apply as for any captioning model. Generation encodes the whole prompt and decodes
from T5's start token with the KV cache (ModelRunner.generate; vljax.load(RUN).generate).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from vljax.models import model_config, seq2seq_lm
from vljax.models.capabilities import GENERATION, IMAGE_FEATURES, PROMPTED
from vljax.models.llava import Projector, projected_image, resolve_bridge, splice
from vljax.models.qformer import make_qformer
from vljax.models.registry import register_model
from vljax.models.vit import ViT

PREFIX_LM_DEFAULTS: dict[str, Any] = dict(image=None, lm=None, projector="qformer", qformer=None,
                                          image_token_id=None)
# Decoder positions a generation may take: T5's relative positions have no table to run out of.
MAX_DECODE_LEN = 512


def prefix_split(loss_mask: jax.Array | None, ids: jax.Array) -> jax.Array:
  """[B] index of each sequence's first target token (its first True in loss_mask); without a mask,
  or with none True, the sequence's length (all prefix)."""
  lengths = jnp.sum(ids != seq2seq_lm.PAD_ID, axis=1)
  if loss_mask is None:
    return lengths
  return jnp.where(jnp.any(loss_mask, axis=1), jnp.argmax(loss_mask, axis=1), lengths)


def decoder_inputs(ids: jax.Array, split: jax.Array) -> jax.Array:
  """[B, L] T5 decoder inputs: START, then each sequence's target tokens ids[split:] shifted right."""
  j = jnp.arange(ids.shape[1])[None]
  src = split[:, None] + j - 1
  taken = jnp.take_along_axis(ids, jnp.clip(src, 0, ids.shape[1] - 1), axis=1)
  return jnp.where(j == 0, seq2seq_lm.START_ID, jnp.where(src < ids.shape[1], taken, seq2seq_lm.PAD_ID))


def at_text_positions(logits: jax.Array, split: jax.Array) -> jax.Array:
  """Decoder logits [B, T, V] (position j predicts ids[split + j]) -> [B, L=T, V] at the positions of ids
  (position t predicts ids[t + 1]); prefix positions, which predict nothing here, get zeros."""
  t = jnp.arange(logits.shape[1])[None]
  j = t + 1 - split[:, None]
  taken = jnp.take_along_axis(logits, jnp.clip(j, 0, logits.shape[1] - 1)[..., None], axis=1)
  return jnp.where(((j >= 0) & (j < logits.shape[1]))[..., None], taken, 0.0)


@register_model("prefix_lm")
class PrefixLM(seq2seq_lm.Seq2SeqLM):
  """Params: img (ViT), [qformer], projector, txt, encoder, decoder, [logits]."""
  img: ViT | None = None
  projector_kind: str = "qformer"
  qformer: dict[str, Any] | None = None
  image_token_id: int = -1
  splices_image_tokens = True  # one image per sequence, at its <image> (ModelRunner.generate checks it)
  image_prompted = True  # captions and answers continue a text prompt after the image
  encoder_decoder = True  # ModelRunner.generate encodes the prompt and decodes from START_ID
  max_text_len = MAX_DECODE_LEN
  capabilities = frozenset({GENERATION, PROMPTED, IMAGE_FEATURES})
  inputs = ("image", "text", "loss_mask")
  output_names = frozenset({"memory", "caption_logits"})
  rng_streams = ("dropout",)
  needs_image_token = True  # setup fills image_token_id from the tokenizer

  def setup(self):
    super().setup()
    kw = dict(self.module_kw or {})
    if self.projector_kind == "qformer":
      self.bridge = make_qformer(self.qformer, kw)
    self.projector = Projector("linear" if self.projector_kind == "qformer" else self.projector_kind,
                               self.text["width"], **model_config.dtypes(kw))

  def encode_image(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """images [B, 1, H, W, 3] -> memory [B, 1, P, D]: the soft prompt."""
    return {"memory": projected_image(self, images, train, "prefix_lm")}

  def encode_prompt(self, memory: jax.Array, ids: jax.Array, split: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(encoder output [B, L + P - 1, D], its mask): ids[:, 1:split] with the soft prompt at <image>."""
    x, _ = splice(ids, self.embed(ids), memory[:, 0], self.image_token_id)
    patches = memory.shape[2]
    at = jnp.argmax(ids == self.image_token_id, axis=1)[:, None]
    p = jnp.arange(x.shape[1])[None]
    src = jnp.where(p < at, p, p - patches + 1)  # the text position each spliced position holds
    is_image = (p >= at) & (p < at + patches)
    text_ok = (src >= 1) & (src < split[:, None]) & (
        jnp.take_along_axis(ids, jnp.clip(src, 0, ids.shape[1] - 1), axis=1) != seq2seq_lm.PAD_ID)
    mask = is_image | text_ok
    return self.encode_embeddings(x, mask), mask

  def caption_logits(self, memory: jax.Array, ids: jax.Array, loss_mask: jax.Array | None = None) -> jax.Array:
    """Teacher-forced logits [B, L, vocab] at the positions of ids (prefix positions: zeros)."""
    split = prefix_split(loss_mask, ids)
    hidden, mask = self.encode_prompt(memory, ids, split)
    return at_text_positions(self.decode_logits(hidden, mask, decoder_inputs(ids, split)), split)

  def __call__(self, image: jax.Array | None = None, text: jax.Array | None = None,
               loss_mask: jax.Array | None = None, train: bool = False) -> dict[str, jax.Array]:
    """memory (if image) and caption_logits (if both)."""
    out = {} if image is None else self.encode_image(image, train)
    if image is not None and text is not None:
      out["caption_logits"] = self.caption_logits(out["memory"], text, loss_mask)
    return out

  @classmethod
  def from_config(cls, cfg: dict[str, Any]) -> "PrefixLM":
    c = resolve_config(cfg)
    kw = model_config.module_kwargs(c)
    return cls(text=seq2seq_lm.seq2seq_settings(c["lm"]), module_kw=kw, img=ViT(**c["image"], **kw),
               projector_kind=c["projector"], qformer=c["qformer"], image_token_id=c["image_token_id"])


def resolve_config(cfg: dict[str, Any]) -> dict[str, Any]:
  """Defaults filled, every key checked: image (a ViT variant), lm (seq2seq_lm settings), the bridge."""
  from vljax.models.vit import vit_settings  # lazy, as the other image-conditioned LMs

  c = model_config.resolve("prefix_lm", cfg, PREFIX_LM_DEFAULTS, {"image": vit_settings})
  if c["scan"] or c["remat"] != "none":
    raise ValueError(f"prefix_lm loops T5's blocks: scan={c['scan']}, remat={c['remat']!r} are not supported; "
                     "valid: the defaults (False, 'none')")
  return resolve_bridge(c, "prefix_lm", "prefix_lm")
