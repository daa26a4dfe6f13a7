"""CLIP ViT-B/16 at 224 px: the real-scale recipe, for accelerators.

On image-text shards (LAION/DataComp-style, as img2dataset writes them), with ImageNet zero-shot
and COCO retrieval (paths are examples; keys: common.use_real_data):

  python -m vljax.train --config configs/clip_vit_b16.py:'train=webdataset:/data/laion/{00000..41407}.tar,tokenizer=bpe:/data/bpe_simple_vocab_16e6.txt.gz,zeroshot=/data/tfds/imagenet2012/5.1.0,classnames=/data/imagenet_classnames.txt,retrieval=/data/tfds/coco_captions/2017/1.1.0' \\
      --workdir gs://BUCKET/clip_b16

`train=array_record:/data/datacomp/*.array_record` reads ArrayRecord files (convert shards with
`python -m vljax.data.convert`): random access, global shuffle, exact resume. Without `train=`
it runs on the shapes world. Batch 32k over an FSDP mesh, bfloat16 compute, scanned and
rematerialised layers. Smoke test on CPU:
  python -m vljax.train --config configs/clip_vit_b16.py --workdir /tmp/b16 \\
      --config.batch_size=8 --config.total_steps=2 --config.schedule.warmup_steps=1 \\
      --config.precision.compute_dtype=float32
"""

import common


def get_config(arg=None):
  args = common.parse_arg(arg, **common.REAL_DATA_ARGS)
  c = common.base_config(arg)
  c.model = dict(name="composable", image=dict(variant="B/16", pool="tok", posemb="learned"),
                 text=dict(variant="B", causal=True, pool="last"),
                 contrastive=dict(embed_dim=512, logit_scale_init=1 / 0.07), scan=True, remat="minimal")
  c.objectives = {"softmax_contrastive": 1.0}
  c.loss_impl = "shard_map"
  c.data.update(image_size=224, max_len=77, num_threads=16, prefetch=8, workers=16,
                normalization="clip", crop_scale=(0.9, 1.0))
  c.batch_size = 32768
  c.total_steps = 100_000
  c.optimizer = dict(name="adamw", lr=5e-4, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.2, grad_clip_norm=1.0)
  c.schedule = dict(name="warmup_cosine", warmup_steps=2000, end_fraction=0.0)
  return common.use_real_data(common.accelerator_training(c, eval_every=2000), args, eval_every=2000)
