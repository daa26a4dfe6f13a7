"""Decoder-only language model: ids -> token + position embedding -> causal transformer -> vocab logits.

Trained alone (configs/lm_shapes.py) on captions and question-answer text, it is the language
half that image-conditioned models (LLaVA, Flamingo) start from via `init_from`: they keep its
parameter names (txt, lm, logits) so its checkpoint loads into them unchanged.

A pretrained LM's architecture instead of the text tower's: `lm="hf:DIR"` (a Hugging Face GPT-2, OPT, Llama,
Mistral or Qwen2 folder) or `lm=dict(...)` of vljax/models/causal_lm.py's SETTINGS, as the workdirs of
`python -m vljax.convert --checkpoint DIR` hold; the model is then causal_lm.CausalLM, with the same
parameter names and methods.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import linen as nn

from vljax.models import causal_lm, flops, layers, model_config
from vljax.models.decoder import TokenEmbedding, causal_mask, vocab_logits
from vljax.models.registry import register_model
from vljax.models.text import text_settings

LM_DEFAULTS: dict[str, Any] = dict(text=None, lm=None)  # lm: a pretrained LM's architecture (see above)


@register_model("lm")
class LanguageModel(nn.Module):
  """Params: txt (embeddings), lm (causal blocks + final norm), logits (vocab head)."""
  text: dict[str, Any]  # text_settings(): width, depth, mlp_dim, num_heads, vocab_size, max_len
  module_kw: dict[str, Any] | None = None
  capabilities = frozenset()  # text only: nothing an image evaluator can use
  inputs = ("text",)
  output_names = frozenset({"caption_logits"})  # of the training pass
  rng_streams = ("dropout",)

  def setup(self):
    kw = dict(self.module_kw or {})
    dtypes = model_config.dtypes(kw)
    t = self.text
    self.txt = TokenEmbedding(t["vocab_size"], t["width"], t["max_len"], **dtypes)
    self.lm = layers.Transformer(t["depth"], t["mlp_dim"], t["num_heads"], **kw)
    self.logits = layers.dense(t["vocab_size"], ("embed", "vocab"), name="logits", **dtypes)

  def run(self, x: jax.Array, mask: jax.Array | None = None, decode_index=None) -> jax.Array:
    """Embedded sequence [B, L, D] -> logits; causal mask from the caller or the KV cache."""
    return vocab_logits(self.logits, self.lm(x, mask, decode_index=decode_index))

  def caption_logits(self, memory: jax.Array | None, ids: jax.Array) -> jax.Array:
    del memory  # no image: the same signature as the captioning models
    return self.run(self.txt(ids), causal_mask(ids.shape[1]))

  def decode_step(self, ids: jax.Array, memory: jax.Array | None, decode_index: jax.Array) -> jax.Array:
    del memory
    return self.run(self.txt(ids, decode_index), decode_index=decode_index)

  def __call__(self, image: jax.Array | None = None, text: jax.Array | None = None,
               train: bool = False) -> dict[str, jax.Array]:
    """caption_logits of the text (the image, if any, is ignored: this is the text-only model)."""
    del image, train
    return {} if text is None else {"caption_logits": self.caption_logits(None, text)}

  @classmethod
  def from_config(cls, cfg: dict[str, Any]) -> "LanguageModel | causal_lm.CausalLM":
    c = resolve_config(cfg)
    model_cls = causal_lm.CausalLM if c["lm"] is not None else cls
    return model_cls(text=c["text"], module_kw=model_config.module_kwargs(c))

  @classmethod
  def flop_parts(cls, cfg: dict[str, Any], inputs: flops.Inputs) -> list[flops.Part]:
    """Forward FLOPs by part (vljax/models/flops.py) over the data's text length."""
    c = resolve_config(cfg)
    if c["lm"] is not None:
      return [flops.Part("txt", ("txt",), reads={"text": 0.0})] + causal_lm.decoder_parts(
          c["text"], inputs.text_len, "txt", c["scan"])
    return [flops.Part("txt", ("txt",), reads={"text": 0.0})] + flops.decoder_lm(c["text"], inputs.text_len, "txt",
                                                                               scan=c["scan"])


def resolve_config(cfg: dict[str, Any]) -> dict[str, Any]:
  """With lm set, `text` becomes its causal_lm settings (and must not be given)."""
  if cfg.get("lm") is None:
    c = model_config.resolve("lm", cfg, LM_DEFAULTS, {"text": text_settings})
    c["text"]["causal"] = True
    return c
  if cfg.get("text"):
    raise ValueError(f"lm config: lm={cfg['lm']!r} is the architecture; text={cfg['text']!r} would be a second "
                     "one; give one of them")
  c = model_config.resolve("lm", cfg, LM_DEFAULTS, {})
  c["text"] = causal_lm.language_settings(c["lm"])
  return c
