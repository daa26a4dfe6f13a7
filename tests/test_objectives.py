"""Contrastive losses: pinned numbers, 1-device == N-device values and gradients, registry."""

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from vljax import objectives as obj

BATCH = ("data", "fsdp")
MESHES = {"data8": (8, 1, 1), "fsdp8": (1, 8, 1), "d2f2t2": (2, 2, 2)}


def make_mesh(shape):
  return jax.make_mesh(shape, ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def random_embeddings(b=16, d=8, seed=0):
  rng = np.random.default_rng(seed)
  return (unit(rng.normal(size=(b, d))).astype(np.float32),
          unit(rng.normal(size=(b, d))).astype(np.float32))


def tiny_example():
  """B=3, D=2: points on the unit circle, texts slightly rotated from their images."""
  ang = np.array([0.0, 2.0, 4.0])
  zimg = np.stack([np.cos(ang), np.sin(ang)], 1)
  ang_t = ang + np.array([0.3, -0.2, 0.5])
  ztxt = np.stack([np.cos(ang_t), np.sin(ang_t)], 1)
  return zimg.astype(np.float32), ztxt.astype(np.float32)


def numpy_softmax(zimg, ztxt, scale):
  logits = scale * zimg.astype(np.float64) @ ztxt.T.astype(np.float64)

  def lse(x, axis):
    m = x.max(axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis, keepdims=True))).squeeze(axis)

  diag = np.diag(logits)
  return (np.mean(lse(logits, 1) - diag) + np.mean(lse(logits, 0) - diag)) / 2


def numpy_sigmoid(zimg, ztxt, scale, bias):
  logits = scale * zimg.astype(np.float64) @ ztxt.T.astype(np.float64) + bias
  labels = 2 * np.eye(len(zimg)) - 1
  return np.sum(np.log1p(np.exp(-labels * logits))) / len(zimg)


# ---------------------------------------------------------------- pinned numerics


@pytest.mark.cross_path
def test_softmax_pinned():
  zimg, ztxt = tiny_example()
  loss = float(obj.softmax_contrastive_loss(zimg, ztxt, 2.0))
  # float32 against float64 of a 3x3 loss: a few roundings of 6e-8 each; 1e-6 is ~16 of them
  np.testing.assert_allclose(loss, numpy_softmax(zimg, ztxt, 2.0), rtol=1e-6)
  np.testing.assert_allclose(loss, 0.13003848117034228, rtol=1e-6)


@pytest.mark.cross_path
def test_sigmoid_pinned():
  zimg, ztxt = tiny_example()
  loss = float(obj.sigmoid_contrastive_loss(zimg, ztxt, 2.0, -1.0))
  # float32 against float64 of 9 pairs: a few roundings of 6e-8 each; 1e-6 is ~16 of them
  np.testing.assert_allclose(loss, numpy_sigmoid(zimg, ztxt, 2.0, -1.0), rtol=1e-6)
  np.testing.assert_allclose(loss, 0.655967310428253, rtol=1e-6)


@pytest.mark.cross_path
def test_closed_form_orthonormal():
  """With zimg = ztxt = I_2 the logits are s*I: both losses have a textbook closed form."""
  eye = np.eye(2, dtype=np.float32)
  s, b = 3.0, -1.5
  softplus = lambda x: np.log1p(np.exp(x))
  # float32 against float64: softplus(-3) = 0.049 comes out of a log-sum-exp of ~3 minus 3, whose
  # rounding (~2e-7) is 4.5e-7 of the result, the same on every ISA (table in the README)
  np.testing.assert_allclose(obj.softmax_contrastive_loss(eye, eye, s), softplus(-s), rtol=1e-6)
  np.testing.assert_allclose(obj.sigmoid_contrastive_loss(eye, eye, s, b),
                             softplus(-(s + b)) + softplus(b), rtol=1e-6)


def test_perfect_alignment_is_low_and_mismatch_is_high():
  z = np.eye(4, dtype=np.float32)
  wrong = z[[1, 2, 3, 0]]
  assert obj.softmax_contrastive_loss(z, z, 100.0) < 1e-6
  assert obj.sigmoid_contrastive_loss(z, z, 100.0, -10.0) < 1e-3
  assert obj.softmax_contrastive_loss(z, wrong, 100.0) > 10.0
  assert obj.sigmoid_contrastive_loss(z, wrong, 100.0, -10.0) > 10.0


@pytest.mark.cross_path
def test_symmetric_in_image_and_text():
  zimg, ztxt = random_embeddings()
  # transposed logits: the same 16-term sums along the other axis, in another order (gamma_15 = 9e-7)
  np.testing.assert_allclose(obj.softmax_contrastive_loss(zimg, ztxt, 7.0),
                             obj.softmax_contrastive_loss(ztxt, zimg, 7.0), rtol=1e-6)
  np.testing.assert_allclose(obj.sigmoid_contrastive_loss(zimg, ztxt, 7.0, -3.0),
                             obj.sigmoid_contrastive_loss(ztxt, zimg, 7.0, -3.0), rtol=1e-6)


@pytest.mark.cross_path
def test_softmax_matches_optax():
  zimg, ztxt = random_embeddings()
  logits = 7.0 * zimg @ ztxt.T
  labels = jnp.arange(len(zimg))
  ce = optax.softmax_cross_entropy_with_integer_labels
  expected = (ce(logits, labels).mean() + ce(logits.T, labels).mean()) / 2
  # optax's log-softmax and ours: the same float32 formula in other ops (a rounding or two)
  np.testing.assert_allclose(obj.softmax_contrastive_loss(zimg, ztxt, 7.0), expected, rtol=1e-6)


def test_bfloat16_inputs_give_float32_loss():
  zimg, ztxt = random_embeddings()
  loss = obj.softmax_contrastive_loss(jnp.bfloat16(zimg), jnp.bfloat16(ztxt), 7.0)
  assert loss.dtype == jnp.float32


# ---------------------------------------------------------------- distributed == single-device


def plain_softmax(zi, zt, s, b):
  del b
  return obj.softmax_contrastive_loss(zi, zt, s)


def registry_loss(name, impl):
  def fn(zi, zt, s, b):
    outputs = {"img_emb": zi, "txt_emb": zt, "logit_scale": s, "logit_bias": b}
    return obj.get_objective(name).fn(outputs, {}, impl=impl)[0]
  return fn


DISTRIBUTED = {
    "all_gather_softmax": (plain_softmax,
                           lambda zi, zt, s, b: obj.all_gather_softmax_contrastive_loss(zi, zt, s)),
    "ring_sigmoid": (obj.sigmoid_contrastive_loss, obj.ring_sigmoid_contrastive_loss),
    "softmax_gather": (plain_softmax, registry_loss("softmax_contrastive", "gather")),
    "softmax_shard_map": (plain_softmax, registry_loss("softmax_contrastive", "shard_map")),
    "sigmoid_gather": (obj.sigmoid_contrastive_loss, registry_loss("sigmoid_contrastive", "gather")),
    "sigmoid_shard_map": (obj.sigmoid_contrastive_loss,
                          registry_loss("sigmoid_contrastive", "shard_map")),
}


def value_and_grads(fn, *args):
  return jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3)))(*args)


@pytest.mark.cross_path
@pytest.mark.parametrize("mesh_name", MESHES)
@pytest.mark.parametrize("form", DISTRIBUTED)
def test_distributed_equals_single_device(mesh_name, form):
  plain, distributed = DISTRIBUTED[form]
  zimg, ztxt = random_embeddings()
  scale, bias = jnp.float32(7.0), jnp.float32(-3.0)
  want_loss, want_grads = value_and_grads(plain, zimg, ztxt, scale, bias)

  mesh = make_mesh(MESHES[mesh_name])
  rows = NamedSharding(mesh, P(BATCH, None))
  with jax.set_mesh(mesh):
    zi, zt = jax.device_put(zimg, rows), jax.device_put(ztxt, rows)
    got_loss, got_grads = value_and_grads(distributed, zi, zt, scale, bias)

  # another split of 16 rows: every sum reordered (2 gamma_15 = 1.8e-6 of its terms, ~5x that on
  # the loss through log-sum-exp); 1e-5 holds that with room; atol for gradients near 0
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5, atol=1e-5)
  for name, got, want in zip(("zimg", "ztxt", "scale", "bias"), got_grads, want_grads):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"d loss / d {name}")


@pytest.mark.cross_path
def test_explicit_mesh_without_set_mesh():
  zimg, ztxt = random_embeddings()
  mesh = make_mesh((2, 2, 2))
  # the sharded forms reorder 16-term sums (2 gamma_15 = 1.8e-6 of their terms)
  np.testing.assert_allclose(
      obj.all_gather_softmax_contrastive_loss(zimg, ztxt, 7.0, mesh=mesh),
      obj.softmax_contrastive_loss(zimg, ztxt, 7.0), rtol=1e-5)
  np.testing.assert_allclose(
      obj.ring_sigmoid_contrastive_loss(zimg, ztxt, 7.0, -3.0, mesh=mesh),
      obj.sigmoid_contrastive_loss(zimg, ztxt, 7.0, -3.0), rtol=1e-5)


@pytest.mark.cross_path
def test_falls_back_without_mesh_or_batch_shards():
  zimg, ztxt = random_embeddings()
  want = obj.sigmoid_contrastive_loss(zimg, ztxt, 7.0, -3.0)
  # the fallback is the plain loss itself: numpy's default rtol=1e-7 (within a rounding)
  np.testing.assert_allclose(obj.ring_sigmoid_contrastive_loss(zimg, ztxt, 7.0, -3.0), want)
  with jax.set_mesh(make_mesh((1, 1, 8))):  # batch axes of size 1: nothing to shard over
    np.testing.assert_allclose(obj.ring_sigmoid_contrastive_loss(zimg, ztxt, 7.0, -3.0), want)


def test_distributed_rejects_bad_batch_and_axes():
  zimg, ztxt = random_embeddings(b=12)
  with jax.set_mesh(make_mesh((8, 1, 1))):
    with pytest.raises(ValueError, match="12 is not divisible by the 8"):
      obj.ring_sigmoid_contrastive_loss(zimg, ztxt, 7.0, -3.0)
    with pytest.raises(ValueError, match=r"\['batch'\] not in mesh axes"):
      obj.all_gather_softmax_contrastive_loss(zimg, ztxt, 7.0, batch_axes=("batch",))


# ---------------------------------------------------------------- memory: no B x B in the ring


def _all_avals(jaxpr):
  """Every output aval and dot_general output shape in a jaxpr, recursing into sub-jaxprs."""
  avals, dots = [], []
  for eqn in jaxpr.eqns:
    avals += [v.aval for v in eqn.outvars]
    if eqn.primitive.name == "dot_general":
      dots.append(eqn.outvars[0].aval.shape)
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      a, d = _all_avals(sub)
      avals, dots = avals + a, dots + d
  return avals, dots


def _largest_dot(fn, zi, zt):
  jaxpr = jax.make_jaxpr(jax.value_and_grad(fn, argnums=(0, 1, 2, 3)))(zi, zt, 7.0, -3.0)
  avals, dots = _all_avals(jaxpr.jaxpr)
  largest_array = max(int(np.prod(a.shape)) for a in avals if hasattr(a, "shape"))
  return max(dots, key=lambda s: int(np.prod(s))), largest_array


def test_ring_never_materialises_global_logits():
  big_b, n = 16, 8
  b = big_b // n
  zimg, ztxt = random_embeddings(b=big_b, d=2)  # D=2 <= b so the logits are the biggest dots
  mesh = make_mesh((n, 1, 1))
  rows = NamedSharding(mesh, P(BATCH, None))
  with jax.set_mesh(mesh):
    zi, zt = jax.device_put(zimg, rows), jax.device_put(ztxt, rows)
    ring_dot, ring_largest = _largest_dot(obj.ring_sigmoid_contrastive_loss, zi, zt)
    gather_dot, _ = _largest_dot(
        lambda zi, zt, s, b: obj.all_gather_softmax_contrastive_loss(zi, zt, s), zi, zt)
    plain_dot, _ = _largest_dot(obj.sigmoid_contrastive_loss, zi, zt)
    hlo = jax.jit(jax.grad(obj.ring_sigmoid_contrastive_loss, argnums=(0, 1, 2, 3))).lower(
        zi, zt, 7.0, -3.0).compile().as_text()
  assert ring_dot == (b, b)
  assert ring_largest < big_b * big_b  # nothing anywhere, not just dots, is B x B
  assert gather_dot == (b, big_b)  # the all-gather softmax holds its rows of the logits
  assert plain_dot == (big_b, big_b)  # the plain loss on global arrays: B x B (the contrast)
  # Compiled per-device program: no f32[16,16] buffer on any device.
  assert f"f32[{big_b},{big_b}]" not in hlo


# ---------------------------------------------------------------- registry


def test_registry_names_and_errors():
  assert {"softmax_contrastive", "sigmoid_contrastive"} <= set(obj.OBJECTIVES)
  with pytest.raises(ValueError, match=r"unknown objective 'clipp'.*softmax_contrastive"):
    obj.get_objective("clipp")
  zimg, ztxt = random_embeddings()
  outputs = {"img_emb": zimg, "txt_emb": ztxt, "logit_scale": 7.0}
  with pytest.raises(ValueError, match=r"unknown impl 'ring'.*'gather', 'shard_map'"):
    obj.get_objective("softmax_contrastive").fn(outputs, {}, impl="ring")
  with pytest.raises(ValueError, match=r"needs model output 'logit_bias'"):
    obj.call_objective("sigmoid_contrastive", outputs, {}, {}, impl="gather")
  with pytest.raises(ValueError, match="unknown objective 'nope'"):
    obj.combined_loss({"softmax_contrastive": 1.0, "nope": 1.0}, outputs, {})
  with pytest.raises(ValueError, match="no objectives given"):
    obj.combined_loss({}, outputs, {})


def test_register_objective_adds_and_rejects_duplicates():
  @obj.register_objective("_test_constant", reads=("img_emb",), couples_examples=True)
  def constant(outputs, batch, *, impl="gather"):
    return jnp.float32(2.0), {}

  try:
    info = obj.get_objective("_test_constant")
    assert (info.fn, info.needs, info.couples_examples, info.drives_model) == (constant, ("img_emb",), True, False)
    with pytest.raises(ValueError, match="already registered"):
      obj.register_objective("_test_constant", reads=(), couples_examples=True)(lambda *a, **k: None)
    with pytest.raises(ValueError, match="does not couple examples declares its count"):
      obj.register_objective("_test_uncounted", reads=(), couples_examples=False)
  finally:
    del obj.OBJECTIVES["_test_constant"]


@pytest.mark.cross_path
def test_combined_loss_weights_and_metrics():
  zimg, ztxt = random_embeddings()
  outputs = {"img_emb": zimg, "txt_emb": ztxt, "logit_scale": 7.0, "logit_bias": -3.0}
  total, metrics = obj.combined_loss({"softmax_contrastive": 1.0, "sigmoid_contrastive": 0.5},
                                     outputs, {})
  soft = obj.softmax_contrastive_loss(zimg, ztxt, 7.0)
  sig = obj.sigmoid_contrastive_loss(zimg, ztxt, 7.0, -3.0)
  # the same losses in one jitted sum vs alone: only XLA's fusion differs (a rounding or two)
  np.testing.assert_allclose(total, soft + 0.5 * sig, rtol=1e-6)
  np.testing.assert_allclose(metrics["softmax_contrastive_loss"], soft, rtol=1e-6)
  np.testing.assert_allclose(metrics["sigmoid_contrastive_loss"], sig, rtol=1e-6)
  np.testing.assert_allclose(metrics["loss"], total)
  assert float(metrics["logit_scale"]) == 7.0 and float(metrics["logit_bias"]) == -3.0


def test_ring_sigmoid_memory_follows_the_local_batch():
  """Per-device temp memory of loss + gradients on 8 devices: the ring holds (b, b) blocks of the
  local batch b = B / 8 (rematerialised in the backward pass); the plain form holds (b, B) rows."""
  from vljax.parallel.mesh import make_mesh
  mesh = make_mesh({"data": 8})
  temp = {}
  for name, fn in (("ring", obj.ring_sigmoid_contrastive_loss), ("plain", obj.sigmoid_contrastive_loss)):
    z = jax.ShapeDtypeStruct((4096, 64), jnp.float32, sharding=NamedSharding(mesh, P(("data", "fsdp"), None)))
    with jax.set_mesh(mesh):
      grad = jax.jit(jax.value_and_grad(lambda a, b: fn(a, b, 10.0, -10.0), argnums=(0, 1)))
      temp[name] = grad.lower(z, z).compile().memory_analysis().temp_size_in_bytes
  block = (4096 // 8) ** 2 * 4  # one (b, b) float32 block
  assert temp["ring"] < 6 * block, temp
  assert temp["ring"] < temp["plain"] / 2, temp
