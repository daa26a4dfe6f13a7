"""Self-distillation and masked prediction (vljax/objectives/self_distillation.py) on the EMA teacher:
the switch at a fraction of training, exact resume across it, no gradient into the teacher, a loss
blind to unmasked patches, the ViT's mask token, bad options named."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from conftest import checkpointed_state, sigterm_after_logging, tiny_config
from vljax import objectives
from vljax.metrics import read_metrics
from vljax.models.vit import make_vit
from vljax.objectives import self_distillation as sd
from vljax.parallel.mesh import make_mesh
from vljax.parallel.sharding import LOGICAL_RULES
from vljax.train import setup, step as step_lib
from vljax.train.trainer import train_and_evaluate

SWITCHED = {"self_distillation": dict(weight=1.0, start_fraction=0.5, local_crops=2, local_size=16),
            "masked_prediction": dict(weight=0.5, start_fraction=0.5, mask_ratio=0.5)}


def _config(objectives=None, **overrides):
  """tiny_config's SigLIP with both objectives on from update 2 of 0..2 (round(0.5 * 3), half up)."""
  keys = dict(total_steps=3, evals={}, ema=dict(decay=0.9, warmup=False, evaluate="raw"),
              checkpoint=dict(every=3, keep=2, async_save=False))
  keys.update(overrides)
  cfg = tiny_config(**keys)
  cfg.objectives = objectives or {"sigmoid_contrastive": 1.0, **SWITCHED}  # replaced whole, not merged
  cfg.model.contrastive.logit_bias_init = -10.0
  cfg.model.image.mask_token = True
  return cfg


@pytest.fixture(scope="module")
def switch_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("switch"))
  train_and_evaluate(_config(), workdir)
  return workdir


def test_the_losses_are_exactly_zero_before_the_switch_and_on_after(switch_run):
  """Logged step s is update s - 1: updates 0 and 1 come before the switch at 2."""
  series = read_metrics(switch_run)
  for name in SWITCHED:
    assert series[f"train/{name}_active"] == {1: 0.0, 2: 0.0, 3: 1.0}
    assert [series[f"train/{name}_loss"][s] for s in (1, 2)] == [0.0, 0.0] and series[f"train/{name}_loss"][3] > 0
  for s in (1, 2):  # before the switch the total is the sigmoid loss alone, to the bit
    assert series["train/loss"][s] == series["train/sigmoid_contrastive_loss"][s]
  assert series["train/loss"][3] > series["train/sigmoid_contrastive_loss"][3]


def test_resume_across_the_switch_is_bit_for_bit(switch_run, tmp_path, monkeypatch):
  """Preempted after update 1 (before the switch), resumed for update 2 (after it): params,
  optimizer state and EMA teacher equal to the straight run's."""
  part = str(tmp_path / "part")
  sigterm_after_logging(monkeypatch, 1)
  train_and_evaluate(_config(), part)
  monkeypatch.undo()
  assert sorted(read_metrics(part)["train/loss"]) == [1, 2]  # the step in flight at SIGTERM finishes
  train_and_evaluate(_config(), part)
  straight, resumed = checkpointed_state(switch_run, 3), checkpointed_state(part, 3)
  for key in ("params", "opt_state", "ema_params"):
    assert jax.tree.structure(resumed[key]) == jax.tree.structure(straight[key]), key
    for a, b in zip(jax.tree.leaves(resumed[key]), jax.tree.leaves(straight[key])):
      np.testing.assert_array_equal(a, b, err_msg=key)
  series, again = read_metrics(switch_run), read_metrics(part)
  for name in ("self_distillation_loss", "masked_prediction_loss", "loss"):
    assert again[f"train/{name}"][3] == series[f"train/{name}"][3]


def test_the_teacher_gets_no_gradient_and_the_switch_gates_the_students(switch_run):
  """Both objectives alone, on the run's final weights and EMA: before the switch the loss and every
  gradient are exactly 0; after it the image tower learns, the unused text tower and the EMA teacher
  get exactly 0."""
  cfg = _config(objectives=dict(SWITCHED))
  parts = setup.build(cfg)
  mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
  state = checkpointed_state(switch_run, 3)
  loss_fn = step_lib.make_loss_fn(parts.model, cfg)
  rng = np.random.RandomState(0)
  batch = {"image": jnp.asarray(rng.rand(4, 32, 32, 3), jnp.float32),
           "text": jnp.asarray(rng.randint(1, 50, (4, 12)), jnp.int32)}

  @jax.jit
  def grads(params, ema, step):
    with nn.logical_axis_rules(LOGICAL_RULES):
      fn = lambda p, e: loss_fn(p, {}, batch, jax.random.PRNGKey(1), e, None, None, step)[0]
      return jax.value_and_grad(fn, argnums=(0, 1))(params, ema)

  with jax.set_mesh(mesh):
    off, (g_off, g_off_ema) = grads(state["params"], state["ema_params"], jnp.int32(1))
    on, (g_on, g_on_ema) = grads(state["params"], state["ema_params"], jnp.int32(2))
  assert float(off) == 0.0 and float(on) > 0
  assert not any(np.any(np.asarray(g)) for g in jax.tree.leaves((g_off, g_off_ema, g_on_ema)))
  flat = traverse_util.flatten_dict(g_on, sep="/")
  assert any(np.any(np.asarray(g)) for k, g in flat.items() if k.startswith("img/"))
  assert np.any(np.asarray(flat["img/mask_token"]))  # the masked pass uses the token
  assert not any(np.any(np.asarray(g)) for k, g in flat.items() if k.startswith("txt"))


def test_the_masked_loss_ignores_unmasked_patches():
  rng = np.random.RandomState(0)
  student, teacher, noise = (jnp.asarray(rng.randn(3, 16, 8), jnp.float32) for _ in range(3))
  mask = sd.patch_mask(jax.random.PRNGKey(0), 3, 16, 6)
  assert np.asarray(mask).sum(1).tolist() == [6, 6, 6]

  @jax.jit
  def losses(student):
    out = {}
    for kind in sd.KINDS:
      loss = lambda s: sd.masked_feature_loss(s, teacher, mask, kind)
      noisy = jnp.where(mask[..., None], student, 1e3 * noise)  # unmasked positions replaced
      out[kind] = (loss(student), loss(noisy), loss(student + 1.0), jax.grad(loss)(student))
    return out

  for kind, (loss, noisy, moved, grad) in losses(student).items():
    assert float(noisy) == float(loss) and float(moved) != float(loss), kind
    grad, masked = np.asarray(grad), np.asarray(mask)
    assert not np.any(grad[~masked]) and np.all(np.any(grad[masked], axis=-1)), kind


def test_the_vit_makes_a_mask_token_only_when_asked_and_masked_pixels_do_not_leak():
  image = jnp.asarray(np.random.RandomState(0).rand(2, 32, 32, 3), jnp.float32)
  plain, masked = (make_vit("mu/8", depth=1, posemb="learned", mask_token=on) for on in (False, True))
  shapes = jax.eval_shape(plain.init, jax.random.PRNGKey(0), image)["params"]
  block = "encoder/block_0/"
  assert sorted(traverse_util.flatten_dict(nn.unbox(shapes), sep="/")) == sorted(  # the tree as before masking
      ["embedding/bias", "embedding/kernel", "encoder/encoder_norm/bias", "encoder/encoder_norm/scale",
       "posemb/pos_embedding"] + [block + k for k in (
           "attn/key/kernel", "attn/out/bias", "attn/out/kernel", "attn/query/bias", "attn/query/kernel",
           "attn/value/bias", "attn/value/kernel", "ln1/bias", "ln1/scale", "ln2/bias", "ln2/scale",
           "mlp/fc1/bias", "mlp/fc1/kernel", "mlp/fc2/bias", "mlp/fc2/kernel")])
  p_masked = nn.unbox(jax.jit(masked.init)(jax.random.PRNGKey(0), image)["params"])
  p_plain = {k: v for k, v in p_masked.items() if k != "mask_token"}
  assert set(p_masked) - set(p_plain) == {"mask_token"}
  assert jax.tree.structure(p_plain) == jax.tree.structure(nn.unbox(shapes))
  run_masked = jax.jit(lambda x, m: masked.apply({"params": p_masked}, x, mask=m))
  run_plain = jax.jit(lambda x: plain.apply({"params": p_plain}, x))
  for a, b in zip(run_masked(image, jnp.zeros((2, 16), bool)), run_plain(image)):  # nothing masked: unchanged
    np.testing.assert_array_equal(a, b)
  mask = sd.patch_mask(jax.random.PRNGKey(3), 2, 16, 8)
  pixels = jnp.repeat(jnp.repeat(mask.reshape(2, 4, 4), 8, 1), 8, 2)[..., None]
  other = jnp.where(pixels, 1.0 - image, image)  # new content in the masked patches only
  for a, b in zip(run_masked(image, mask), run_masked(other, mask)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match=r"has no mask token: set model.image.mask_token=True"):
    plain.apply({"params": p_plain}, image, mask=mask)
  # A local crop smaller than the learned table's grid: the table is resized, 4x4 -> 2x2 patches.
  small = run_plain(image[:, :16, :16])
  assert small[1].shape == (2, 4, 32) and np.all(np.isfinite(np.asarray(small[1])))


def test_random_crops_are_inside_the_image_and_resized():
  image = jnp.broadcast_to(jnp.arange(32, dtype=jnp.float32)[None, :, None, None], (2, 32, 32, 3))
  crops = jax.jit(lambda x: sd.random_crops(jax.random.PRNGKey(0), x, 3, 16, (0.05, 0.4)))(image)
  assert crops.shape == (6, 16, 16, 3)
  rows = np.asarray(crops[..., 0, 0])  # each crop's rows: increasing, within the image's 0..31
  assert np.all(np.diff(rows, axis=1) > 0) and rows.min() >= 0 and rows.max() <= 31
  assert np.all(rows[:, -1] - rows[:, 0] < 32 * np.sqrt(0.4 * 4 / 3))


def _access(cfg, ema=True):
  parts = setup.build(cfg)
  return parts.model, objectives.ModelAccess(parts.model, None, jax.random.PRNGKey(0),
                                             momentum_params={} if ema else None, step=jnp.int32(0),
                                             total_steps=cfg.total_steps)


BATCH = {"image": jnp.zeros((2, 32, 32, 3)), "text": jnp.zeros((2, 12), jnp.int32)}
OUTPUTS = {"img_emb": jnp.zeros((2, 16)), "img_tokens": jnp.zeros((2, 16, 32))}


@pytest.mark.parametrize("name, options, message", [
    ("self_distillation", dict(start_fraction=1.0), r"self_distillation.start_fraction=1.0 is invalid; valid: a "
                                                    r"fraction of total_steps in \[0, 1\)"),
    ("masked_prediction", dict(start_fraction=-0.2), r"masked_prediction.start_fraction=-0.2 is invalid"),
    ("self_distillation", dict(local_size=40), r"local_size=40 \(crops of 40 px\) does not fit: valid: a multiple "
                                               r"of the patch size 8 from 8 to the image size 32"),
    ("self_distillation", dict(local_size=12), r"local_size=12 .* does not fit"),
    ("self_distillation", dict(local_crops=0), r"local_crops=0 is invalid; valid: a whole number >= 1"),
    ("self_distillation", dict(crop_scale=(0.5, 0.2)), r"crop_scale=\(0.5, 0.2\) is invalid; valid: \(min, max\)"),
    ("self_distillation", dict(kind="l1"), r"kind='l1' is invalid; valid: one of \['cosine', 'mse'\]"),
    ("masked_prediction", dict(mask_ratio=1.0), r"mask_ratio=1.0 is invalid; valid: a fraction in \(0, 1\)"),
    ("masked_prediction", dict(mask_ratio=0.0), r"mask_ratio=0.0 is invalid"),
    ("masked_prediction", dict(mask_ratio=0.01), r"mask_ratio=0.01 masks 0 of the 16 patches"),
])
def test_bad_options_name_the_value(name, options, message):
  model, access = _access(_config())
  with pytest.raises(ValueError, match=message):
    objectives.get_objective(name).fn(OUTPUTS, BATCH, model=access, **options)


def test_a_missing_teacher_or_mask_token_is_named():
  _, access = _access(_config(), ema=False)
  for name in SWITCHED:
    with pytest.raises(ValueError, match=rf"objectives.{name} distils from a teacher that is the EMA of the "
                                         r"weights, and this run keeps none \(ema.decay=0\)"):
      objectives.get_objective(name).fn(OUTPUTS, BATCH, model=access)
  cfg = _config()
  cfg.model.image.mask_token = False
  _, access = _access(cfg)
  with pytest.raises(ValueError, match=r"has none; set model.image.mask_token=True"):
    objectives.get_objective("masked_prediction").fn(OUTPUTS, BATCH, model=access)
  cfg.model.image.update(mask_token=True, depth=0)
  _, access = _access(cfg)
  with pytest.raises(ValueError, match=r"needs transformer layers .* model.image.depth=0; valid: depth >= 1"):
    objectives.get_objective("masked_prediction").fn(OUTPUTS, BATCH, model=access)
