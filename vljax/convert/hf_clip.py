"""Hugging Face `CLIPModel` (config.json + model.safetensors) -> vljax's composable model
(image and text towers with a contrastive head).

Also the second half of `openai_clip`, which renames OpenAI's state dict into these names.
"""

from __future__ import annotations

from vljax.convert import towers
from vljax.convert.target import (IMAGE_NORMALIZATIONS, Target, activations, contrastive_model, hf_vision_trunk,
                                  logit_config, text_config, text_tables, vit_config)
from vljax.convert.towers import Tensors

# transformers' CLIPTextConfig / CLIPVisionConfig defaults, for keys a config.json leaves out.
TEXT_DEFAULTS = dict(num_attention_heads=8, hidden_act="quick_gelu", layer_norm_eps=1e-5)
VISION_DEFAULTS = dict(num_attention_heads=12, hidden_act="quick_gelu", layer_norm_eps=1e-5)
CLIP_NORMALIZATION = IMAGE_NORMALIZATIONS["clip"]
IGNORED = (r".*position_ids",)  # buffers of older transformers versions


def read(path: str) -> tuple[Tensors, dict]:
  """(tensors, spec) of a Hugging Face CLIP folder (or its weights file with config.json beside it)."""
  tensors, spec, _ = towers.read_hf_two_tower(path, "clip", "hf_siglip", VISION_DEFAULTS, TEXT_DEFAULTS,
                                              CLIP_NORMALIZATION)
  return tensors, spec


def to_vljax(t: Tensors, spec: dict, target: Target) -> tuple[dict, dict, dict]:
  """(model config, params, data settings) of HF-named CLIP tensors; spec gives heads/activation/eps."""
  v, x = spec["vision"], spec["text"]
  v_act, x_act = activations(spec, target)

  # Image tower: conv (no bias) -> [CLS] + patches, each with a position row -> ln_pre -> encoder ->
  # ln_post on [CLS] (vljax norms every token; [CLS] comes out the same) -> projection without bias.
  trunk = hf_vision_trunk(t, spec, target, 1, "CLIP image position embedding")
  patch_weight, patch, posemb, image_size, encoder, depth = trunk
  img = {"embedding": towers.patch_embedding(patch_weight, None, spec["normalization"], target.normalization),
         "cls": t.take("vision_model.embeddings.class_embedding"),
         "posemb": {"pos_embedding": posemb},
         "pre_norm": towers.layer_norm(t, "vision_model.pre_layrnorm"),
         "encoder": encoder}
  img_proj = towers.linear(t, "visual_projection", bias=False)
  width, mlp_dim = img["cls"].shape[0], encoder["block_0"]["mlp"]["fc1"]["kernel"].shape[1]
  image_cfg = vit_config(width, depth, mlp_dim, v["num_heads"], patch, pool="tok", pre_norm=True,
                         cls_posemb=True, activation=v_act, norm_eps=v["norm_eps"])

  # Text tower: causal, pooled at EOS (the last non-pad token of vljax's rows), projection without bias.
  embedding, positions = text_tables(t.take("text_model.embeddings.token_embedding.weight"),
                                     t.take("text_model.embeddings.position_embedding.weight"), target)
  encoder, depth = towers.encoder(t, "text_model.encoder", x["num_heads"], "text_model.final_layer_norm")
  txt = {"embedding": {"embedding": embedding}, "posemb": {"pos_embedding": positions}, "encoder": encoder}
  txt_proj = towers.linear(t, "text_projection", bias=False)
  width, mlp_dim = embedding.shape[1], encoder["block_0"]["mlp"]["fc1"]["kernel"].shape[1]
  text_cfg = text_config(width, depth, mlp_dim, x["num_heads"], vocab_size=embedding.shape[0],
                         max_len=positions.shape[0], causal=True, pool="last",
                         activation=x_act, norm_eps=x["norm_eps"])

  log_scale = float(t.take("logit_scale").reshape(()))
  t.check_all_taken(IGNORED)
  model_cfg = contrastive_model(image_cfg, text_cfg, img_proj["kernel"].shape[1],
                                dict(image=(True, False), text=(True, False)), **logit_config(log_scale))
  params = {"img": img, "img_proj": img_proj, "txt": txt, "txt_proj": txt_proj, "t": log_scale}
  return model_cfg, params, dict(image_size=image_size, max_len=positions.shape[0])
