"""Tensor parallelism everywhere: on fsdp=4 x tensor=2, at least 98% of every model's parameter bytes
are sharded (not replicated on all 8 devices), so per-device weight memory falls with the mesh."""

import jax
import numpy as np
import pytest
from flax import linen as nn
from flax.traverse_util import flatten_dict

from vljax import config as config_lib
from vljax.data import tokenizers
from vljax.models import MODELS, get_model
from vljax.models.registry import canonical_config
from vljax.parallel.mesh import make_mesh
from vljax.parallel.sharding import LOGICAL_RULES
from vljax.train import setup, state as state_lib

TOK = tokenizers.get_tokenizer("shapes")
TOWERS = dict(image=dict(variant="S/16"), text=dict(variant="S", vocab_size=32000, max_len=64))
# Each registered model at a realistic width (S: 384), where weight matrices dominate as they do at scale;
# composable also as CLIP, CoCa and CapPa (written in their legacy forms, which build it).
MODEL_CONFIGS = {
    "two_tower": dict(name="two_tower", embed_dim=384, **TOWERS),
    "coca": dict(name="coca", embed_dim=384, num_queries=64, **TOWERS),
    "cappa": dict(name="cappa", **TOWERS),
    "lm": dict(name="lm", text=TOWERS["text"]),
    "llava": dict(name="llava", image_token_id=TOK.image_id, image=TOWERS["image"],
                  text=dict(TOWERS["text"], max_len=320)),
    "flamingo": dict(name="flamingo", image_token_id=TOK.image_id, num_latents=64, **TOWERS),
    # Imported language models (vljax/convert/hf_lm.py): Llama-like (GQA, untied) and GPT-2-like (tied).
    "lm_llama": dict(name="lm", lm=dict(vocab_size=32000, width=384, depth=12, num_heads=6, num_kv_heads=2,
                                        mlp_dim=1024, max_len=64, norm="rmsnorm", positions="rope", mlp="swiglu")),
    "lm_gpt2": dict(name="lm", lm=dict(vocab_size=32000, width=384, depth=12, num_heads=6, mlp_dim=1536, max_len=64,
                                       qkv_bias=True, out_bias=True, mlp_bias=True, tie_embeddings=True)),
    "seq2seq_lm": dict(name="seq2seq_lm", lm=dict(vocab_size=32000, width=384, depth=6, num_heads=6, head_dim=64,
                                                  mlp_dim=1024)),  # FlanT5-like (vljax/convert/hf_t5.py)
    # BLIP-2's FlanT5 form: a Q-Former's soft prompt into the T5 encoder (vljax/models/prefix_lm.py).
    "prefix_lm": dict(name="prefix_lm", image_token_id=TOK.image_id, image=TOWERS["image"],
                      lm=dict(vocab_size=32000, width=384, depth=6, num_heads=6, head_dim=64, mlp_dim=1024),
                      qformer=dict(TOWERS["text"], variant="S", num_queries=32, vocab_size=32000, max_len=32)),
    "composable": dict(name="composable", **TOWERS, contrastive=dict(embed_dim=384, image_pool="map"),
                       decoder=dict(TOWERS["text"], mode="parallel", memory_queries=64)),
    # BLIP: the fusion head on the decoder's blocks (share="blip") and one of its own (share="none").
    "composable_blip": dict(name="composable", **TOWERS, contrastive=dict(embed_dim=384),
                            decoder=TOWERS["text"], fusion=dict(share="blip")),
    # BLIP-2's Q-Former (stage 1): queries, shared self-attention, per-part MLPs, cross-attention every 2nd block.
    "qformer": dict(name="qformer", image=TOWERS["image"], text=dict(TOWERS["text"], variant="S"), num_queries=32,
                    embed_dim=256),
    "composable_fusion": dict(name="composable", **TOWERS, contrastive=dict(embed_dim=384),
                              fusion=dict(share="none", variant="S", vocab_size=32000, max_len=64)),
    # Imported BLIP (vljax/convert/hf_blip.py): BERT's post-LN text transformers, [CLS] kept in the image tokens,
    # the decoder's BERT LM-head transform.
    "composable_blip_imported": dict(
        name="composable", image=dict(TOWERS["image"], pool="tok", cls_posemb=True, cls_in_tokens=True),
        text=dict(TOWERS["text"], pool="first", norm_position="post"), contrastive=dict(embed_dim=384),
        fusion=dict(share="none", variant="S", vocab_size=32000, max_len=64, norm_position="post")),
    "composable_blip_captioner": dict(name="composable", image=dict(TOWERS["image"], pool="tok", cls_posemb=True,
                                                                    cls_in_tokens=True),
                                      decoder=dict(TOWERS["text"], norm_position="post", head_transform=True)),
}


def test_every_registered_model_is_covered():
  assert {canonical_config(cfg)["name"] for cfg in MODEL_CONFIGS.values()} == set(MODELS)


@pytest.mark.parametrize("name", sorted(MODEL_CONFIGS))
def test_at_least_98_percent_of_parameter_bytes_are_sharded(name):
  model = get_model(MODEL_CONFIGS[name])
  cfg = config_lib.base_config()
  cfg.data.update(image_size=224, max_len=64, format="vlm" if name in ("llava", "flamingo", "prefix_lm") else "caption")
  abstract = jax.eval_shape(lambda r: model.init(r, **state_lib.dummy_inputs(cfg, 8))["params"],
                            jax.random.PRNGKey(0))
  mesh = make_mesh(dict(data=1, fsdp=4, tensor=2))
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, LOGICAL_RULES)
  total = sharded = 0
  replicated = []
  for path, leaf in flatten_dict(nn.unbox(abstract)).items():
    spec = flatten_dict(shardings)[path].spec
    size = int(np.prod(leaf.shape)) * leaf.dtype.itemsize
    total += size
    if any(axis is not None for axis in spec):
      sharded += size
    else:
      replicated.append(("/".join(path), size))
  biggest = sorted(replicated, key=lambda x: -x[1])[:5]
  assert sharded / total >= 0.98, f"{name}: {sharded / total:.4f} sharded; largest replicated: {biggest}"
