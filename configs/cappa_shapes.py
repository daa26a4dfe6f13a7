"""CapPa (captioning with parallel prediction) on the shapes world, on CPU in minutes.

  python -m vljax.train --config configs/cappa_shapes.py --workdir runs/cappa

Same batch size and steps as clip_shapes.py; trained only by captioning, 75% of examples with
parallel prediction. Zero-shot, retrieval and binding score captions by their log-likelihood
given the image (no contrastive embeddings); captions are generated greedily. Measured figures
in README "Results".
"""

import common


def get_config(arg=None):
  c = common.base_config(arg)
  c.model = common.shapes_cappa()
  c.objectives = {"captioning": 1.0}
  c = common.shapes_training(c)
  # Likelihood scoring runs the decoder once per (image, caption) pair: fewer pairs than CLIP.
  c.evals = common.shapes_evals(every=250, captioning=True,
                                zeroshot=dict(num_examples=320, templates=("a photo of a {}.", "a {}.")),
                                retrieval=dict(num_examples=256))
  return c
