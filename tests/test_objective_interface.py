"""Objectives declare what they read and whether they couple examples; one may run further passes of
the model on the step's parameters and draw named random streams; a run whose objectives, model and
data do not fit fails at start, naming them, with the workdir untouched."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import numerics
from conftest import tiny_config, workdir_listing
from vljax import models, objectives
from vljax.data import pipeline, tokenizers
from vljax.models import get_model
from vljax.models.vit import vit_settings
from vljax.parallel.mesh import make_mesh
from vljax.train import setup, state as state_lib, step as step_lib
from vljax.train.trainer import _global_batch, train_and_evaluate

FLIP = "_test_flip_consistency"


def test_every_objective_reads_outputs_that_some_model_gives():
  given = set().union(*(cls.output_names for cls in models.MODELS.values()))
  for name, info in objectives.OBJECTIVES.items():
    assert set(info.needs) <= given, name
    assert info.couples_examples or info.count is not None, name


def _lm_format(cfg):
  cfg.data.format = "lm"


START_ERRORS = {
    "sigmoid_without_bias": (
        lambda c: setattr(c, "objectives", {"sigmoid_contrastive": 1.0}),
        r"objectives.sigmoid_contrastive needs model output\(s\) \['logit_bias'\]; model 'composable' gives "
        r".*Valid: set model.contrastive.logit_bias_init .*; or objectives this model serves: "
        r"\['distill_embeddings', 'distill_logits', 'masked_prediction', 'momentum_contrastive', "
        r"'self_distillation', 'softmax_contrastive', 'softmax_hard_negatives'\]"),
    "captioning_without_decoder": (
        lambda c: setattr(c, "objectives", {"captioning": 1.0}),
        r"objectives.captioning needs model output\(s\) \['caption_logits'\].*a model that gives "
        r"'caption_logits': \['flamingo', 'llava', 'lm', 'prefix_lm', 'qformer'\]"),
    "images_from_a_text_only_format": (
        _lm_format,
        r"model 'composable' reads \['image', 'text'\], but data.format='lm' holds no 'image'.*"
        r"valid: data.format in \['caption', 'hard_negatives', 'locca', 'vlm'\]"),
}


@pytest.mark.parametrize("case", sorted(START_ERRORS))
def test_an_objective_or_format_the_model_cannot_serve_fails_at_start(case, tmp_path):
  change, match = START_ERRORS[case]
  existing = tmp_path / "existing"
  existing.mkdir()
  (existing / "notes.txt").write_text("keep me")
  before = workdir_listing(existing)
  for workdir in (tmp_path / "missing", existing):
    cfg = tiny_config(evals={})
    change(cfg)
    with pytest.raises(ValueError, match=match):
      train_and_evaluate(cfg, str(workdir))
  assert not os.path.exists(tmp_path / "missing")
  assert workdir_listing(existing) == before


@pytest.fixture
def flip_objective():
  """A per-example objective that runs the model a second time: each image's embedding is pulled
  toward that of its mirror image, computed by another pass on the step's parameters."""
  @objectives.register_objective(FLIP, reads=("img_emb",), couples_examples=False,
                                 count=lambda batch, pad_id: jnp.float32(batch["image"].shape[0]))
  def flip_consistency(outputs, batch, *, model):
    mirrored = model.apply(image=batch["image"][:, :, ::-1], pass_name="mirror")["img_emb"]
    distance = jnp.sum((outputs["img_emb"] - mirrored) ** 2, axis=-1)
    return jnp.mean(distance), {"mirror_distance": jax.lax.stop_gradient(jnp.mean(distance))}

  yield FLIP
  del objectives.OBJECTIVES[FLIP]


def _loss_and_grads(cfg):
  parts = setup.build(cfg)
  local = next(iter(pipeline.make_train_dataset(cfg.data, tokenizers.get_tokenizer("shapes"),
                                                global_batch_size=cfg.batch_size, seed=0)))
  mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    state, _ = state_lib.create_train_state(parts.model, parts.tx, cfg, mesh, state_lib.dummy_inputs(cfg, 1))
    grads_fn = step_lib.make_grads_fn(parts.model, cfg)
    batch = _global_batch(local, mesh)
    loss, metrics, grads = jax.jit(lambda p, b: grads_fn(p, {}, b, state.rng))(state.params, batch)
  return parts.model, jax.device_get(state.params), jax.device_get(local), loss, metrics, jax.device_get(grads)


@pytest.mark.slow
@pytest.mark.cross_path
def test_an_objective_that_runs_the_model_trains_and_gradcache_splits_it(flip_objective):
  """The step's gradient is that of the written-out loss (contrastive + the mirror pass), and
  GradCache over 2 micro-batches gives the full batch's loss and gradient."""
  cfg = tiny_config(evals={})
  cfg.objectives = {"softmax_contrastive": 1.0, flip_objective: 0.5}
  model, params, batch, loss, metrics, grads = _loss_and_grads(cfg)
  assert float(metrics["mirror_distance"]) > 0

  def forward(p, batch):  # both passes of the written-out loss; row i of every output is example i's
    out = model.apply({"params": p}, image=batch["image"], text=batch["text"], train=True)
    return {**out, "mirrored": model.apply({"params": p}, image=batch["image"][:, :, ::-1], train=True)["img_emb"]}

  def written_out(outputs, batch):
    contrastive = objectives.softmax_contrastive_loss(outputs["img_emb"], outputs["txt_emb"], outputs["logit_scale"])
    return contrastive + 0.5 * jnp.mean(jnp.sum((outputs["img_emb"] - outputs["mirrored"]) ** 2, axis=-1))

  want_loss, want_grads = jax.jit(jax.value_and_grad(lambda p: written_out(forward(p, batch), batch)))(params)
  # Both comparisons are of the same sums in other orders (another program; micro-batches), so float32
  # rounding bounds them (tests/numerics.py). The loss: the contrastive part's bound plus the mirror
  # mean's, a sum of batch x embed_dim squares. Each gradient element sums, per example, both passes'
  # patches or the text's tokens (fewer); GradCache's micro-batch programs may reorder those too.
  size, embed_dim = batch["text"].shape[0], cfg.model["contrastive"]["embed_dim"]
  positions = 2 * (cfg.data.image_size // vit_settings(cfg.model["image"]["variant"])["patch"]) ** 2
  mirror = float(metrics["mirror_distance"])
  mirror_bound = float(numerics.reordered_sum_bound(mirror, size * embed_dim))
  loss_bound = numerics.contrastive_loss_bound(float(metrics["softmax_contrastive_loss"]), size) + 0.5 * mirror_bound
  terms = numerics.gradient_terms_abs_sum(forward, written_out, params, batch)
  flat = lambda tree: traverse_util.flatten_dict(jax.device_get(tree), sep="/")  # noqa: E731
  np.testing.assert_allclose(loss, want_loss, rtol=0, atol=loss_bound)
  numerics.assert_gradients_within_reordering(flat(grads), flat(want_grads), terms, size * positions)

  cfg.grad_accum_steps, cfg.grad_accum_mode = 2, "gradcache"
  *_, cached_loss, cached_metrics, cached_grads = _loss_and_grads(cfg)
  np.testing.assert_allclose(cached_loss, loss, rtol=0, atol=loss_bound)
  np.testing.assert_allclose(cached_metrics["mirror_distance"], mirror, rtol=0, atol=mirror_bound)
  numerics.assert_gradients_within_reordering(flat(cached_grads), flat(grads), terms, size * positions)


def test_random_streams_are_separate_by_name_and_capp_masks_from_its_own():
  key = jax.random.PRNGKey(0)
  keys = {s: objectives.stream_rng(key, s) for s in ("dropout", "mask", "negatives")}
  assert np.array_equal(keys["dropout"], key)  # the model's dropout draws what it always drew
  assert len({bytes(np.asarray(jax.random.key_data(k) if jnp.issubdtype(k.dtype, jax.dtypes.prng_key) else k))
              for k in keys.values()}) == 3
  cappa = get_model(dict(name="cappa", image=dict(variant="mu/8"), text=dict(variant="mu", vocab_size=40, max_len=8),
                         parallel_fraction=0.5))
  assert set(objectives.model_rngs(cappa, key)) == {"dropout", "mask", "patch_dropout"}
  image, text = jnp.ones((8, 16, 16, 3)), jnp.ones((8, 8), jnp.int32)
  params = cappa.init(key, image=image, text=text)["params"]

  def logits(dropout, mask):
    rngs = {"dropout": jax.random.PRNGKey(dropout), "mask": jax.random.PRNGKey(mask)}
    return cappa.apply({"params": params}, image=image, text=text, train=True, rngs=rngs)["caption_logits"]

  # which examples get parallel prediction follows the mask stream alone
  np.testing.assert_array_equal(logits(1, 7), logits(2, 7))
  assert not np.allclose(logits(1, 7), logits(1, 8))
