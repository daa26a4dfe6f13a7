"""GradCache accumulation: k micro-batches give the full-batch contrastive loss and gradients exactly,
at the activation memory of one micro-batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from conftest import tiny_config
from vljax import config as config_lib
from vljax import models, objectives
from vljax.data import tokenizers
from vljax.models.resolve import resolve_model_config
from vljax.models.composable import l2_normalize
from vljax.parallel.mesh import make_mesh
from vljax.parallel.sharding import LOGICAL_RULES
from vljax.train import gradcache, setup, state as state_lib, step as step_lib
from vljax.train.trainer import _global_batch

K = 4
TOL = 1e-5  # float32: the two orders of summation differ by rounding only


def small_config(objective: str = "softmax_contrastive", **overrides):
  """tiny_config with the shallowest towers (compile time is most of these tests)."""
  c = tiny_config(evals={}, **{"batch_size": 32, **overrides})
  c.objectives = {objective: 1.0}
  c.model.image.depth = 0
  c.model.text.depth = 1
  if objective == "sigmoid_contrastive":
    c.model.contrastive.logit_scale_init, c.model.contrastive.logit_bias_init = 10.0, -5.0
  c.schedule.name = "constant"  # warmup would make the first step's lr 0 and the params test vacuous
  return c


def with_accum(cfg, mode: str, k: int):
  cfg = cfg.copy_and_resolve_references()
  cfg.grad_accum_mode, cfg.grad_accum_steps = mode, k
  return cfg


def fake_batch(cfg, n: int, seed: int = 0) -> dict:
  """Random images; [BOS] tokens [EOS] then pads, [EOS] at 2..max_len-1, so micro-batches hold
  different numbers of caption tokens."""
  rng = np.random.default_rng(seed)
  length = cfg.data.max_len
  text = rng.integers(4, 60, (n, length)).astype(np.int32)
  ends = rng.integers(2, length, n)
  text[:, 0] = 1
  text[np.arange(n), ends] = 2
  text[np.arange(length)[None] > ends[:, None]] = 0
  image = rng.normal(size=(n, cfg.data.image_size, cfg.data.image_size, 3)).astype(np.float32)
  return dict(image=image, text=text)


def one_device():
  return make_mesh({"data": 1}, devices=jax.devices()[:1])


def model_and_params(cfg):
  model = models.get_model(resolve_model_config(cfg, tokenizers.get_tokenizer(cfg.data.tokenizer)))
  init = lambda r: nn.unbox(model.init(r, **state_lib.dummy_inputs(cfg, 1))["params"])
  with nn.logical_axis_rules(LOGICAL_RULES):
    return model, jax.jit(init)(jax.random.PRNGKey(0))


def loss_and_grads(model, cfg, params, batch):
  """make_grads_fn's (loss, metrics, grads), jitted, with every param trainable."""
  fn = step_lib.make_grads_fn(model, cfg)

  def run(params, batch):
    with nn.logical_axis_rules(LOGICAL_RULES):
      return fn(params, {}, batch, jax.random.PRNGKey(1))
  return jax.device_get(jax.jit(run)(params, batch))


def max_diff(a, b) -> float:
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)))


def assert_close(actual, expected):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=TOL, atol=TOL), actual, expected)


def full_batch_and(mode: str, objective: str):
  """(loss, metrics, grads) of the full batch and of K micro-batches in `mode`, from one init."""
  cfg = small_config(objective)
  batch = fake_batch(cfg, cfg.batch_size)
  with jax.set_mesh(one_device()):
    model, params = model_and_params(cfg)
    return (loss_and_grads(model, with_accum(cfg, "mean", 1), params, batch),
            loss_and_grads(model, with_accum(cfg, mode, K), params, batch))


@pytest.mark.cross_path
@pytest.mark.parametrize("objective", [  # sigmoid: the same split, another loss
    "softmax_contrastive", pytest.param("sigmoid_contrastive", marks=pytest.mark.slow)])
def test_gradcache_equals_full_batch(objective):
  (full_loss, full_metrics, full), (loss, metrics, grads) = full_batch_and("gradcache", objective)
  print(f"{objective}: gradcache vs full max |grad diff| {max_diff(grads, full):.2e}")
  np.testing.assert_allclose(loss, full_loss, rtol=TOL)
  assert_close(metrics, full_metrics)
  assert sorted(metrics) == sorted(full_metrics)
  assert_close(grads, full)


def test_mean_mode_sees_fewer_negatives():
  """k micro-batches of B/k rows each see k x fewer negatives: an easier loss, other gradients."""
  (full_loss, _, full), (mean_loss, _, mean) = full_batch_and("mean", "softmax_contrastive")
  assert mean_loss < full_loss - 0.1
  assert max_diff(mean, full) > 1e-2


@pytest.mark.slow
@pytest.mark.cross_path
def test_gradcache_train_step_on_mesh_and_peak_memory():
  """The real step on a data x fsdp x tensor = 2x2x2 mesh: new params equal the k=1 step's, and the
  compiled step's temp memory is that of one micro-batch."""
  # Batch 128 = 32 rows a device: activations are many times the tiny SigLIP's 80 KB of params.
  cfg = small_config("sigmoid_contrastive", batch_size=128, loss_impl="shard_map",
                     mesh=dict(data=2, fsdp=2, tensor=2))
  # Adam's first update is lr * g / (|g| + eps): with eps=1e-6 a gradient that is 0 up to float noise
  # (attention key biases) turns its noise into +-lr; a larger eps keeps such params still.
  cfg.optimizer.eps = 1e-3
  parts = setup.build(cfg)
  mesh = make_mesh(cfg.mesh)
  results, temp = {}, {}
  with jax.set_mesh(mesh):
    batch = _global_batch(fake_batch(cfg, cfg.batch_size), mesh)
    state, shardings = state_lib.create_train_state(parts.model, parts.tx, cfg, mesh, state_lib.dummy_inputs(cfg, 4))
    for mode, k in (("mean", 1), ("gradcache", K)):
      step = step_lib.make_train_step(parts.model, parts.tx, with_accum(cfg, mode, k), parts.schedule, mesh,
                                      shardings)
      compiled = step.lower(state, batch).compile()
      temp[mode] = compiled.memory_analysis().temp_size_in_bytes
      new_state, metrics = compiled(jax.tree.map(jnp.copy, state), batch)
      results[mode] = jax.device_get((new_state.params, metrics))
  (full_params, full_metrics), (params, metrics) = results["mean"], results["gradcache"]
  print(f"2x2x2 mesh: new params max |diff| {max_diff(params, full_params):.2e}; temp bytes a device: "
        f"full batch {temp['mean']}, gradcache k={K} {temp['gradcache']}")
  assert_close(params, full_params)
  for key in ("loss", "grad_norm", "sigmoid_contrastive_loss"):
    np.testing.assert_allclose(metrics[key], full_metrics[key], rtol=TOL)
  assert max_diff(params, jax.device_get(state.params)) > 1e-4  # the step did move them
  assert temp["gradcache"] < 0.5 * temp["mean"]


@pytest.mark.cross_path
@pytest.mark.parametrize("pad_id", [0, 9])
def test_gradcache_matches_autodiff_with_dropout_scalars_and_captioning(pad_id):
  """A toy captioner against plain autodiff of the same k forward passes: each micro-batch's dropout
  mask is the same in both passes, the temperature and bias (in every micro-batch's outputs) count
  once, and captioning keeps the whole batch's token mean though micro-batches hold different
  numbers of target tokens (micro-batch 3: none, all masked), counted with the given pad id."""
  rng = np.random.default_rng(0)
  n, length, vocab, width = 16, 7, 10, 4
  params = {"wi": rng.normal(size=(6, width)), "tok": rng.normal(size=(vocab, width)),
            "wt": rng.normal(size=(width, width)), "wc": rng.normal(size=(width, vocab)),
            "wv": rng.normal(size=(6, vocab)), "t": np.log(10.0), "b": -3.0}
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  ends = rng.integers(1, length, n)
  text = np.where(np.arange(length)[None] <= ends[:, None], rng.integers(1, vocab - 1, (n, length)), pad_id)
  loss_mask = (np.arange(length)[None] >= 2) & (np.arange(n)[:, None] % K != 3)  # rows j, j+k.. = micro j
  batch = {"image": rng.normal(size=(n, 6)).astype(np.float32), "text": text.astype(np.int32),
           "loss_mask": loss_mask}
  spec = {"sigmoid_contrastive": 1.0, "softmax_contrastive": 0.5,
          "captioning": dict(weight=2.0, label_smoothing=0.1)}

  def apply_fn(trainable, frozen, micro, key):
    p = {**trainable, **frozen}
    keep = jax.random.bernoulli(key, 0.7, micro["image"].shape)
    x = jnp.where(keep, micro["image"], 0.0) / 0.7
    tokens = p["tok"][micro["text"]]
    return {"img_emb": l2_normalize(jnp.tanh(x @ p["wi"])), "txt_emb": l2_normalize(tokens.mean(1) @ p["wt"]),
            "caption_logits": tokens @ p["wc"] + (x @ p["wv"])[:, None],
            "logit_scale": jnp.exp(p["t"]), "logit_bias": p["b"]}

  def autodiff(trainable, frozen, batch, key):
    outs = [apply_fn(trainable, frozen, gradcache.take_micro(batch, K, j), jax.random.fold_in(key, j))
            for j in range(K)]
    rows = gradcache.merge_micro({name: jnp.stack([o[name] for o in outs])
                                  for name in ("img_emb", "txt_emb", "caption_logits")})
    return objectives.combined_loss(spec, {**outs[-1], **rows}, batch, pad_id=pad_id)

  def both(batch, key):
    frozen = {"b": params["b"]}  # a frozen scalar gets no gradient and still reaches the loss
    trainable = {name: v for name, v in params.items() if name != "b"}
    got = gradcache.gradcache_value_and_grad(apply_fn, spec, trainable, frozen, batch, key, k=K, pad_id=pad_id)
    (loss, metrics), grads = jax.value_and_grad(autodiff, has_aux=True)(trainable, frozen, batch, key)
    return got, (loss, metrics, grads)

  with jax.set_mesh(one_device()):
    got, expected = jax.device_get(jax.jit(both)(batch, jax.random.PRNGKey(3)))
  assert sorted(got[2]) == ["t", "tok", "wc", "wi", "wt", "wv"]
  assert sorted(got[1]) == sorted(expected[1])
  print(f"toy: max |grad diff| {max_diff(got[2], expected[2]):.2e}")
  assert_close(got, expected)


def test_unsupported_objective_and_unknown_mode_are_rejected():
  # Couples examples and runs the model itself (as matching on negatives mined across the batch would):
  # its extra pass takes inputs from the whole batch, so no micro-batch can stand for its share.
  @objectives.register_objective("_gradcache_test_pairwise", reads=("img_emb",), couples_examples=True)
  def pairwise(outputs, batch, *, impl="gather", model):
    return jnp.float32(0.0), {}

  try:
    cfg = small_config(grad_accum_steps=K, grad_accum_mode="gradcache")
    cfg.objectives = {"softmax_contrastive": 1.0, "_gradcache_test_pairwise": 1.0}
    with pytest.raises(ValueError, match=r"gradcache.*\['_gradcache_test_pairwise'\].*'captioning'"):
      config_lib.validate(cfg)
    with pytest.raises(ValueError, match="_gradcache_test_pairwise"):
      step_lib.make_grads_fn(None, cfg)
  finally:
    del objectives.OBJECTIVES["_gradcache_test_pairwise"]
  cfg = small_config(grad_accum_steps=K, grad_accum_mode="cached")
  with pytest.raises(ValueError, match=r"grad_accum_mode='cached' is unknown; valid: \['mean', 'gradcache'\]"):
    config_lib.validate(cfg)
  with pytest.raises(ValueError, match=r"'cached'.*\['mean', 'gradcache'\]"):
    step_lib.make_grads_fn(None, cfg)
