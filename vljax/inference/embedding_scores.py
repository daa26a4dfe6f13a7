"""Image-text scores of contrastive embeddings: cosines of [N, E] rows, or, for image embeddings in
query form [N, Q, E] (BLIP-2's Q-Former, one embedding per query), the best query's cosine, as
the training loss scores them (vljax/objectives/contrastive.py)."""

from __future__ import annotations

import numpy as np

IMAGES_PER_BLOCK = 256  # query form: [block, Q, N_texts] at a time, not [N_images, Q, N_texts]


def score_matrix(zimg: np.ndarray, ztxt: np.ndarray) -> np.ndarray:
  """[N_images, N_texts] scores of every image with every text."""
  if zimg.ndim == 2:
    return zimg @ ztxt.T
  out = np.empty((len(zimg), len(ztxt)), np.result_type(zimg, ztxt))
  for start in range(0, len(zimg), IMAGES_PER_BLOCK):
    block = zimg[start:start + IMAGES_PER_BLOCK]
    out[start:start + len(block)] = np.max(np.einsum("iqd,jd->iqj", block, ztxt), axis=1)
  return out


def pair_scores(zimg: np.ndarray, ztxt: np.ndarray) -> np.ndarray:
  """[N] scores of the pairs (zimg[i], ztxt[i])."""
  if zimg.ndim == 2:
    return np.sum(zimg * ztxt, axis=1)
  return np.max(np.einsum("iqd,id->iq", zimg, ztxt), axis=1)
