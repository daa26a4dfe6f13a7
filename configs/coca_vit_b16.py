"""CoCa ViT-B/16 at 224 px: the real-scale recipe, for accelerators.

  python -m vljax.train --config configs/coca_vit_b16.py:'train=array_record:/data/datacomp/*.array_record,tokenizer=bpe:/data/bpe_simple_vocab_16e6.txt.gz,zeroshot=/data/tfds/imagenet2012/5.1.0' \\
      --workdir gs://BUCKET/coca_b16

CoCa-Base's layout (Yu et al. 2022, table 1) on a B/16 ViT: 256 captioning queries in cascade with
one contrastive query, 12 unimodal + 12 multimodal text layers of width 768 (text variant "L"),
embed 512, batch 65,536, captioning weight 2 with label smoothing 0.1. Data on disk by the same keys as
clip_vit_b16.py (common.use_real_data); without `train=` it runs on the shapes world.
Smoke test on CPU:
  python -m vljax.train --config configs/coca_vit_b16.py --workdir /tmp/coca_b16 \\
      --config.batch_size=8 --config.total_steps=2 --config.schedule.warmup_steps=1 \\
      --config.precision.compute_dtype=float32 \\
      --config.evals.caption.num_examples=8
"""

import common


def get_config(arg=None):
  args = common.parse_arg(arg, **common.REAL_DATA_ARGS)
  c = common.base_config(arg)
  # The unimodal text decoder is a causal text tower pooling an appended [CLS]; the multimodal one
  # continues from its tokens; the contrastive query reads the 256 captioning queries (cascade).
  c.model = dict(name="composable", image=dict(variant="B/16", posemb="learned"),
                 text=dict(variant="L", causal=True, pool="cls"),
                 contrastive=dict(embed_dim=512, logit_scale_init=1 / 0.07, image_pool="map",
                                  image_pool_input="memory"),
                 decoder=dict(variant="L", depth=12, memory_queries=256, input="text_tower"),
                 scan=True, remat="minimal")
  c.objectives = {"softmax_contrastive": 1.0, "captioning": dict(weight=2.0, label_smoothing=0.1)}
  c.loss_impl = "shard_map"
  c.data.update(image_size=224, max_len=64, num_threads=16, prefetch=8)
  c.batch_size = 65536
  c.total_steps = 500_000
  c.optimizer = dict(name="adamw", lr=8e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, grad_clip_norm=1.0)
  c.schedule = dict(name="warmup_cosine", warmup_steps=2000, end_fraction=0.0)
  return common.use_real_data(common.accelerator_training(c, eval_every=5000, captioning=True), args,
                              eval_every=5000)
