"""SigLIP ViT-B/16 at 224 px (big_vision's B/16 layout): the real-scale sigmoid recipe.

  python -m vljax.train --config configs/siglip_vit_b16.py:'train=array_record:/data/webli/*.array_record,tokenizer=sentencepiece:/data/siglip_c4_en.model?bos=none&pad=eos&clean=canonicalize,zeroshot=/data/tfds/imagenet2012/5.1.0,classnames=/data/imagenet_classnames.txt' \\
      --workdir gs://BUCKET/siglip_b16

The tokenizer options give SigLIP's rows (no BOS, EOS-padded to max_len, final position pooled),
so weights imported with `python -m vljax.convert` from big_vision or Hugging Face fit this
recipe. The sigmoid loss runs as the ppermute ring: no device builds the global B x B logits.
Without `train=` it runs on the shapes world (keys: common.use_real_data).
"""

import common


def get_config(arg=None):
  args = common.parse_arg(arg, **common.REAL_DATA_ARGS)
  return common.use_real_data(sigmoid_b16(arg), args, eval_every=2000)


def sigmoid_b16(arg=None):
  """The recipe before its data (configs/siglip2_vit_b16.py builds on it)."""
  c = common.base_config(arg)
  c.model = dict(name="composable", image=dict(variant="B/16", pool="map", posemb="learned"),
                 text=dict(variant="L", causal=False, pool="last", max_len=64),  # width 768, 12 layers
                 # The MAP-pooled image width is the embedding: no image projection.
                 contrastive=dict(embed_dim=768, logit_scale_init=10.0, logit_bias_init=-10.0, image_proj=False),
                 scan=True, remat="minimal")
  c.objectives = {"sigmoid_contrastive": 1.0}
  c.loss_impl = "shard_map"
  c.data.update(image_size=224, max_len=64, num_threads=16, prefetch=8, workers=16,
                normalization="siglip", crop_scale=(0.9, 1.0))
  c.batch_size = 32768
  c.total_steps = 100_000
  c.optimizer = dict(name="adamw", lr=1e-3, b1=0.9, b2=0.95, eps=1e-6, weight_decay=1e-4, grad_clip_norm=1.0)
  c.schedule = dict(name="warmup_cosine", warmup_steps=5000, end_fraction=0.0)
  return common.accelerator_training(c, eval_every=2000)
