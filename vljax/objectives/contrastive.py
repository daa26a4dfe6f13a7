"""Contrastive losses (CLIP softmax, SigLIP sigmoid) and their sharded forms."""

from __future__ import annotations

from typing import Any, Sequence

import chex
import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from vljax.objectives.registry import register_objective
from vljax.parallel.sharding import BATCH_AXES

IMPLS = ("gather", "shard_map")

Mesh = jax.sharding.Mesh | jax.sharding.AbstractMesh


def _scalar(x: Any, name: str) -> jnp.ndarray:
  """A size-1 parameter (shape () or (1,)) as a float32 scalar."""
  x = jnp.asarray(x)
  if x.size != 1:
    raise ValueError(f"{name} must hold one value, got shape {x.shape}")
  return x.reshape(()).astype(jnp.float32)


def _check_embeddings(zimg: jnp.ndarray, ztxt: jnp.ndarray) -> None:
  """[B, E] each; or the image side in query form [B, Q, E] (BLIP-2's Q-Former: one embedding per query)."""
  chex.assert_rank(ztxt, 2)
  chex.assert_rank(zimg, {2, 3})
  chex.assert_equal_shape([zimg[:, 0] if zimg.ndim == 3 else zimg, ztxt])


def _logits(zimg: jnp.ndarray, ztxt: jnp.ndarray, scale: jnp.ndarray) -> jnp.ndarray:
  """scale * zimg @ ztxt.T, accumulated and returned in float32 (bf16 logits lose the ranking). Either
  side may be in query form [B, Q, E]: a pair's similarity is then its best query's (BLIP-2's ITC)."""
  if zimg.ndim == 3:
    dots = jnp.max(jnp.einsum("iqd,jd->iqj", zimg, ztxt, preferred_element_type=jnp.float32), axis=1)
  elif ztxt.ndim == 3:
    dots = jnp.max(jnp.einsum("id,jqd->iqj", zimg, ztxt, preferred_element_type=jnp.float32), axis=1)
  else:
    dots = jnp.einsum("id,jd->ij", zimg, ztxt, preferred_element_type=jnp.float32)
  return scale * dots


def _rows(z: jnp.ndarray, axes) -> P:
  """The spec of embeddings sharded by example over `axes` ([B, E], or [B, Q, E] in query form)."""
  return P(axes, *([None] * (z.ndim - 1)))


def _ce_sum(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """Sum over rows of cross-entropy of `logits` rows against integer `labels`."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(logp, labels[:, None], axis=-1).sum()


def _sigmoid_block_sum(zimg, ztxt, scale, bias, positives_on_diagonal: bool) -> jnp.ndarray:
  """Sum of -log sigmoid(label * logit) over one block of image x text pairs."""
  logits = _logits(zimg, ztxt, scale) + bias
  n_img, n_txt = logits.shape
  if positives_on_diagonal:
    labels = 2.0 * jnp.eye(n_img, n_txt, dtype=jnp.float32) - 1.0
  else:
    labels = -jnp.ones((n_img, n_txt), jnp.float32)
  return -jax.nn.log_sigmoid(labels * logits).sum()


def softmax_contrastive_loss(zimg: jnp.ndarray, ztxt: jnp.ndarray, logit_scale) -> jnp.ndarray:
  """CLIP's symmetric InfoNCE: mean of image->text and text->image cross-entropies."""
  _check_embeddings(zimg, ztxt)
  logits = _logits(zimg, ztxt, _scalar(logit_scale, "logit_scale"))
  labels = jnp.arange(logits.shape[0])
  i2t = _ce_sum(logits, labels)
  t2i = _ce_sum(logits.T, labels)
  return (i2t + t2i) / (2 * logits.shape[0])


def sigmoid_contrastive_loss(zimg: jnp.ndarray, ztxt: jnp.ndarray, logit_scale,
                             logit_bias) -> jnp.ndarray:
  """SigLIP's pairwise sigmoid loss, summed over all pairs and divided by the batch size."""
  _check_embeddings(zimg, ztxt)
  scale = _scalar(logit_scale, "logit_scale")
  bias = _scalar(logit_bias, "logit_bias")
  return _sigmoid_block_sum(zimg, ztxt, scale, bias, True) / zimg.shape[0]


def _resolve_mesh(mesh: Mesh | None, batch_axes: Sequence[str] | str,
                  batch_size: int) -> tuple[Mesh | None, tuple[str, ...], int]:
  """(mesh, batch axes, shard count); mesh None means 'no sharding, use the plain loss'."""
  axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes)
  if mesh is None:
    mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return None, axes, 1
  missing = [a for a in axes if a not in mesh.shape]
  if missing:
    raise ValueError(f"batch axes {missing} not in mesh axes {tuple(mesh.shape)}")
  n = 1
  for a in axes:
    n *= mesh.shape[a]
  if n == 1:
    return None, axes, 1
  if batch_size % n:
    raise ValueError(f"batch size {batch_size} is not divisible by the {n} shards of {axes}")
  return mesh, axes, n


def all_gather_softmax_contrastive_loss(zimg: jnp.ndarray, ztxt: jnp.ndarray, logit_scale, *,
                                        mesh: Mesh | None = None,
                                        batch_axes: Sequence[str] = BATCH_AXES) -> jnp.ndarray:
  """softmax_contrastive_loss with each device computing only its own (b, B) logit rows."""
  _check_embeddings(zimg, ztxt)
  mesh, axes, n = _resolve_mesh(mesh, batch_axes, zimg.shape[0])
  if mesh is None:
    return softmax_contrastive_loss(zimg, ztxt, logit_scale)
  global_batch = zimg.shape[0]

  def local(zimg_l, ztxt_l, scale):
    b = zimg_l.shape[0]
    # The transpose of all_gather is a reduce-scatter, so every device gets the
    # gradient of its own rows summed over all devices' uses of them.
    zimg_g = lax.all_gather(zimg_l, axes, tiled=True)
    ztxt_g = lax.all_gather(ztxt_l, axes, tiled=True)
    labels = lax.axis_index(axes) * b + jnp.arange(b)
    i2t = _ce_sum(_logits(zimg_l, ztxt_g, scale), labels)
    t2i = _ce_sum(_logits(ztxt_l, zimg_g, scale), labels)
    return lax.psum(i2t + t2i, axes) / (2 * global_batch)

  row = P(axes, None)
  return jax.shard_map(local, mesh=mesh, in_specs=(_rows(zimg, axes), row, P()), out_specs=P())(
      zimg, ztxt, _scalar(logit_scale, "logit_scale"))


def ring_sigmoid_contrastive_loss(zimg: jnp.ndarray, ztxt: jnp.ndarray, logit_scale, logit_bias,
                                  *, mesh: Mesh | None = None,
                                  batch_axes: Sequence[str] = BATCH_AXES) -> jnp.ndarray:
  """sigmoid_contrastive_loss with text chunks passed round a ppermute ring: only (b, b) logits."""
  _check_embeddings(zimg, ztxt)
  mesh, axes, n = _resolve_mesh(mesh, batch_axes, zimg.shape[0])
  if mesh is None:
    return sigmoid_contrastive_loss(zimg, ztxt, logit_scale, logit_bias)
  global_batch = zimg.shape[0]
  ring = [(i, (i + 1) % n) for i in range(n)]

  def local(zimg_l, ztxt_l, scale, bias):
    # Step 0 is the device's own chunk, the only block holding positives; after k
    # shifts device i holds chunk i-k, so n-1 shifts visit every pair exactly once.
    own = _sigmoid_block_sum(zimg_l, ztxt_l, scale, bias, True)

    # Rematerialised: the backward pass recomputes each (b, b) block instead of keeping all n - 1
    # of them, so memory grows with the local batch, not with the number of devices.
    @jax.checkpoint
    def step(carry, _):
      txt, total = carry
      txt = lax.ppermute(txt, axes, ring)
      return (txt, total + _sigmoid_block_sum(zimg_l, txt, scale, bias, False)), None

    # scan, not a Python loop: compile time stays flat as the ring grows to pod size.
    (_, total), _ = lax.scan(step, (ztxt_l, own), None, length=n - 1)
    return lax.psum(total, axes) / global_batch

  row = P(axes, None)
  return jax.shard_map(local, mesh=mesh, in_specs=(_rows(zimg, axes), row, P(), P()), out_specs=P())(
      zimg, ztxt, _scalar(logit_scale, "logit_scale"), _scalar(logit_bias, "logit_bias"))


def _check_impl(impl: str) -> None:
  if impl not in IMPLS:
    raise ValueError(f"unknown impl {impl!r}; valid: {IMPLS}")


@register_objective("softmax_contrastive", reads=("img_emb", "txt_emb"), shared=("logit_scale",),
                    couples_examples=True)
def softmax_contrastive(outputs: dict, batch: dict, *, impl: str = "gather"
                        ) -> tuple[jnp.ndarray, dict]:
  """CLIP objective on outputs img_emb, txt_emb (L2-normalised) and logit_scale."""
  del batch  # the pairing is positional: row i of images goes with row i of texts
  _check_impl(impl)
  zimg, ztxt, scale = outputs["img_emb"], outputs["txt_emb"], outputs["logit_scale"]
  if impl == "gather":
    loss = softmax_contrastive_loss(zimg, ztxt, scale)
  else:
    loss = all_gather_softmax_contrastive_loss(zimg, ztxt, scale)
  return loss, {"logit_scale": lax.stop_gradient(_scalar(scale, "logit_scale"))}


@register_objective("sigmoid_contrastive", reads=("img_emb", "txt_emb"), shared=("logit_scale", "logit_bias"),
                    couples_examples=True)
def sigmoid_contrastive(outputs: dict, batch: dict, *, impl: str = "gather"
                        ) -> tuple[jnp.ndarray, dict]:
  """SigLIP objective on outputs img_emb, txt_emb (L2-normalised), logit_scale and logit_bias."""
  del batch
  _check_impl(impl)
  zimg, ztxt = outputs["img_emb"], outputs["txt_emb"]
  scale, bias = outputs["logit_scale"], outputs["logit_bias"]
  if impl == "gather":
    loss = sigmoid_contrastive_loss(zimg, ztxt, scale, bias)
  else:
    loss = ring_sigmoid_contrastive_loss(zimg, ztxt, scale, bias)
  metrics = {"logit_scale": _scalar(scale, "logit_scale"), "logit_bias": _scalar(bias, "logit_bias")}
  return loss, jax.tree.map(lax.stop_gradient, metrics)
