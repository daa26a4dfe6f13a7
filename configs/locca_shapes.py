"""LocCa (location-aware captioning) on the shapes world, on CPU in minutes; with `:contrastive=sigmoid`,
SigLIP 2's pair: the sigmoid loss on the pooled embeddings + LocCa's decoder on the image tokens.

  python -m vljax.train --config configs/locca_shapes.py --workdir runs/locca
  python -m vljax.train --config configs/locca_shapes.py:contrastive=sigmoid --workdir runs/siglip_locca

The decoder cross-attends to the 8x8 conv tokens and trains per example on one task of
data.locca.tasks (vljax/data/boxes.py): the caption, a referring expression's box as 4 location
tokens (data.tokenizer option loc=32: 32 bins a coordinate), or a box's text. The decoder is dropped
after training; the image tower is what is kept. eval/refexp/acc_iou50 is the box accuracy of the
referring-expression head (IoU >= 0.5), eval/refexp/mean_iou its mean IoU; with the sigmoid loss the
shapes zero-shot, retrieval and binding evaluators read its embeddings.
Options: --config.data.locca.tasks.refexp=... (the probabilities must sum to 1),
--config.objectives.locca=... (its weight).

Measured (contrastive=sigmoid, seed 0, the default 750 x 256; 59 minutes on a 2-core CPU shared with
other jobs, so not a timing): eval/refexp/acc_iou50 0.461, mean_iou 0.393 (0.129 / 0.117 at step 250,
0.391 / 0.360 at 500); zero-shot top1 0.394, retrieval R@1 0.494 / 0.479, binding 0.507;
train/locca_loss 0.72 (refexp 0.88, caption 0.77, grounded 0.34).
"""

import common


def get_config(arg=None):
  args = common.parse_arg(arg, contrastive="none")
  if args["contrastive"] not in ("none", "sigmoid"):
    raise ValueError(f"config argument contrastive={args['contrastive']!r}; valid: 'none' or 'sigmoid'")
  c = common.base_config(arg)
  image = dict(common.SHAPES_IMAGE_TOWER, pool="max")
  decoder = dict(variant="shapes-64", depth=2)
  c.objectives = {"locca": 1.0}
  if args["contrastive"] == "sigmoid":  # SigLIP's head (configs/siglip_shapes.py) beside the decoder
    c.model = common.shapes_contrastive(image=image, logit_scale_init=10.0, logit_bias_init=-10.0)
    c.model.decoder = decoder
    c.objectives = {"sigmoid_contrastive": 1.0, "locca": 1.0}
  else:
    c.model = dict(name="composable", image=image, decoder=decoder)
  c.data.format = "locca"
  c.data.tokenizer = "shapes?loc=32"
  c.data.max_len = 25  # [BOS] <caption> + the longest caption (22 words) + [EOS]
  c.data.locca = dict(tasks=dict(caption=0.5, refexp=0.25, grounded=0.25))
  c = common.shapes_training(c)
  evals = common.shapes_evals(every=250) if args["contrastive"] == "sigmoid" else {}
  c.evals = dict(evals, refexp=dict(every=250, num_examples=256))
  return c
