"""Hugging Face `SiglipModel` (config.json + model.safetensors) -> vljax's composable model
(image and text towers with a contrastive head).

Also the second half of `big_vision_siglip`, which renames big_vision's arrays into these names.
"""

from __future__ import annotations

from vljax.convert import towers
from vljax.convert.target import (IMAGE_NORMALIZATIONS, Target, activations, contrastive_model, hf_vision_trunk,
                                  logit_config, text_config, text_tables, vit_config)
from vljax.convert.towers import Tensors

# transformers' SiglipTextConfig / SiglipVisionConfig defaults, for keys a config.json leaves out.
DEFAULTS = dict(num_attention_heads=12, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
SIGLIP_NORMALIZATION = IMAGE_NORMALIZATIONS["siglip"]
IGNORED = (r".*position_ids",)


def read(path: str) -> tuple[Tensors, dict]:
  """(tensors, spec) of a Hugging Face SigLIP folder (or its weights file with config.json beside it)."""
  tensors, spec, config = towers.read_hf_two_tower(path, "siglip", "hf_clip", DEFAULTS, DEFAULTS,
                                                   SIGLIP_NORMALIZATION)
  if not config.get("vision_config", {}).get("vision_use_head", True):
    raise ValueError(f"{path}: vision_use_head=False leaves SigLIP without an image embedding")
  return tensors, spec


def to_vljax(t: Tensors, spec: dict, target: Target) -> tuple[dict, dict, dict]:
  """(model config, params, data settings) of HF-named SigLIP tensors; spec gives heads/activation/eps."""
  v, x = spec["vision"], spec["text"]
  v_act, x_act = activations(spec, target)

  # Image tower: conv with bias -> + position rows -> encoder -> LayerNorm -> MAP head; no projection.
  trunk = hf_vision_trunk(t, spec, target, 0, "SigLIP image position embedding")
  patch_weight, patch, posemb, image_size, encoder, depth = trunk
  probe = t.take("vision_model.head.probe")
  img = {"embedding": towers.patch_embedding(patch_weight, t.take("vision_model.embeddings.patch_embedding.bias"),
                                             spec["normalization"], target.normalization),
         "posemb": {"pos_embedding": posemb},
         "encoder": encoder,
         "map": {"probe": probe.reshape(-1, probe.shape[-1]),
                 "attn": towers.packed_attention(t, "vision_model.head.attention", v["num_heads"]),
                 "ln": towers.layer_norm(t, "vision_model.head.layernorm"),
                 "mlp": {"fc1": towers.linear(t, "vision_model.head.mlp.fc1"),
                         "fc2": towers.linear(t, "vision_model.head.mlp.fc2")}}}
  width, mlp_dim = probe.shape[-1], encoder["block_0"]["mlp"]["fc1"]["kernel"].shape[1]
  image_cfg = vit_config(width, depth, mlp_dim, v["num_heads"], patch, pool="map",
                         activation=v_act, norm_eps=v["norm_eps"])

  # Text tower: bidirectional, pooled at the final position (EOS-padded rows: the last non-pad one),
  # a projection with bias.
  embedding, positions = text_tables(t.take("text_model.embeddings.token_embedding.weight"),
                                     t.take("text_model.embeddings.position_embedding.weight"), target)
  encoder, depth = towers.encoder(t, "text_model.encoder", x["num_heads"], "text_model.final_layer_norm")
  txt = {"embedding": {"embedding": embedding}, "posemb": {"pos_embedding": positions}, "encoder": encoder}
  txt_proj = towers.linear(t, "text_model.head")
  width, mlp_dim = embedding.shape[1], encoder["block_0"]["mlp"]["fc1"]["kernel"].shape[1]
  text_cfg = text_config(width, depth, mlp_dim, x["num_heads"], vocab_size=embedding.shape[0],
                         max_len=positions.shape[0], causal=False, pool="last", activation=x_act,
                         norm_eps=x["norm_eps"])

  embed_dim = txt_proj["kernel"].shape[1]
  if embed_dim != image_cfg["width"]:
    raise ValueError(f"SigLIP text projection gives {embed_dim} dims but the image tower (no projection) "
                     f"{image_cfg['width']}")
  log_scale, bias = (float(t.take(name).reshape(())) for name in ("logit_scale", "logit_bias"))
  t.check_all_taken(IGNORED)
  model_cfg = contrastive_model(image_cfg, text_cfg, embed_dim, dict(image=(False, None), text=(True, True)),
                                **logit_config(log_scale, bias))
  params = {"img": img, "txt": txt, "txt_proj": txt_proj, "t": log_scale, "b": bias}
  return model_cfg, params, dict(image_size=image_size, max_len=positions.shape[0])
