"""The EMA of the weights (vljax/train/ema.py) and ITC with momentum distillation
(vljax/objectives/momentum.py): the average's arithmetic through the trainer, exact resume,
evaluation of the EMA, loading it, the distilled loss against a hand computation, bad settings."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from conftest import checkpointed_state, sigterm_after_logging, tiny_config
from vljax import checkpoint_io, config as config_lib
from vljax.metrics import read_metrics
from vljax.objectives import momentum, softmax_contrastive_loss
from vljax.train import ema as ema_lib
from vljax.train.trainer import train_and_evaluate

DECAY = 0.8


def _ema_config(**overrides):
  keys = dict(ema=dict(decay=DECAY, warmup=False, evaluate="both"), total_steps=4,
              checkpoint=dict(every=1, keep=10, async_save=False),
              evals=dict(zeroshot=dict(every=0, num_examples=32)))
  keys.update(overrides)
  return tiny_config(**keys)


def _state_at(workdir, step):
  """(params, ema_params) of the checkpoint at `step`, flat, as numpy."""
  state = checkpointed_state(workdir, step)
  return tuple(traverse_util.flatten_dict(state[k], sep="/") for k in ("params", "ema_params"))


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("ema"))
  final = train_and_evaluate(_ema_config(), workdir)
  return workdir, final


def test_ema_follows_its_recursion_from_the_initial_weights(ema_run):
  """After every update t: ema_t = decay * ema_{t-1} + (1 - decay) * params_t, for every trainable param."""
  workdir, _ = ema_run
  history = [_state_at(workdir, step) for step in (1, 2, 3, 4)]
  params_1, ema_1 = history[0]
  assert set(ema_1) == set(params_1)  # nothing frozen: every param has its average
  for (_, ema_before), (params_now, ema_now) in zip(history, history[1:]):
    for key, value in ema_now.items():
      expected = DECAY * ema_before[key] + (1 - DECAY) * params_now[key]
      np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-7, err_msg=key)
  # The average lags the weights: it is not a copy of them.
  moved = [k for k in params_1 if not np.allclose(history[-1][0][k], history[-1][1][k], atol=1e-6)]
  assert len(moved) > len(params_1) // 2


def test_both_weights_are_evaluated_under_their_own_names(ema_run):
  workdir, final = ema_run
  series = read_metrics(workdir)
  assert 4 in series["eval/zeroshot/top1"] and 4 in series["eval/zeroshot/ema_top1"]
  assert set(final) >= {"eval/zeroshot/top1", "eval/zeroshot/ema_top1", "eval/zeroshot/ema_color_acc"}


def test_loading_picks_the_weights_the_run_evaluates(ema_run):
  workdir, _ = ema_run
  raw, _ = checkpoint_io.load_params(workdir)
  averaged, _ = checkpoint_io.load_params(workdir, weights="ema")
  params_4, ema_4 = _state_at(workdir, 4)
  flat_raw, flat_avg = (traverse_util.flatten_dict(p, sep="/") for p in (raw, averaged))
  for key in ema_4:
    np.testing.assert_array_equal(flat_avg[key], ema_4[key])
    np.testing.assert_array_equal(flat_raw[key], params_4[key])
  assert checkpoint_io.evaluated_weights(config_lib.base_config()) == "raw"
  assert checkpoint_io.evaluated_weights(_ema_config(ema=dict(decay=0.9, evaluate="ema"))) == "ema"
  assert checkpoint_io.evaluated_weights(_ema_config()) == "raw"  # "both": the raw ones keep the names
  with pytest.raises(ValueError, match=r"weights='avg' is unknown; valid: \['raw', 'ema'\]"):
    checkpoint_io.load_params(workdir, weights="avg")


def test_resume_restores_the_ema_exactly(ema_run, tmp_path, monkeypatch):
  """Preempted after step 2, resumed to 4: the same EMA bit for bit as the straight run."""
  workdir, _ = ema_run
  part = str(tmp_path / "part")
  sigterm_after_logging(monkeypatch, 2)
  train_and_evaluate(_ema_config(), part)
  monkeypatch.undo()
  assert sorted(read_metrics(part)["train/loss"]) == [1, 2, 3]
  train_and_evaluate(_ema_config(), part)
  resumed = _state_at(part, 4)[1]
  for key, value in _state_at(workdir, 4)[1].items():
    np.testing.assert_array_equal(resumed[key], value, err_msg=key)


def test_resuming_with_the_ema_switched_on_or_off_names_it(ema_run, tmp_path):
  workdir, _ = ema_run
  with pytest.raises(ValueError, match=r"keeps EMA of the weights and this config has none \(ema.decay=0\)"):
    train_and_evaluate(_ema_config(ema=dict(decay=0.0, evaluate="raw"), total_steps=5), workdir)
  plain = str(tmp_path / "plain")
  train_and_evaluate(tiny_config(total_steps=2, evals={}), plain)
  with pytest.raises(ValueError, match=r"has no EMA of the weights and this config keeps one"):
    train_and_evaluate(_ema_config(total_steps=3), plain)
  with pytest.raises(ValueError, match=r"keeps no EMA of its weights"):
    checkpoint_io.load_params(plain, weights="ema")


def test_frozen_params_have_no_average():
  cfg = _ema_config(frozen=("img/.*",))
  from vljax.train import setup, state as state_lib
  from vljax.parallel.mesh import make_mesh
  parts = setup.build(cfg)
  mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
  abstract, shardings = state_lib.plan_train_state(parts.model, parts.tx, cfg, mesh, state_lib.dummy_inputs(cfg, 1))
  averaged = traverse_util.flatten_dict(abstract.ema_params, sep="/")
  assert averaged and not any(k.startswith("img/") for k in averaged)
  assert jax.tree.structure(shardings.ema_params) == jax.tree.structure(abstract.ema_params)


def test_warmup_decay_starts_low_and_reaches_the_setting():
  got = [float(ema_lib.decay_at(0.999, jnp.int32(t), warmup=True)) for t in (0, 10, 100, 100000)]
  np.testing.assert_allclose(got[:3], [1 / 10, 11 / 20, 101 / 110], rtol=1e-6)
  assert got[3] == pytest.approx(0.999)
  assert float(ema_lib.decay_at(0.9, jnp.int32(0), warmup=False)) == pytest.approx(0.9)


@pytest.mark.parametrize("ema, message", [
    (dict(decay=1.0), r"config.ema.decay=1.0 is invalid; valid: 0 \(no EMA\) or a number in \(0, 1\)"),
    (dict(decay=-0.1), r"config.ema.decay=-0.1 is invalid"),
    (dict(decay=0.9, evaluate="mean"), r"config.ema.evaluate='mean' is invalid; valid: one of \['raw', 'ema', 'both'\]"),
    (dict(decay=0.0, evaluate="ema"), r"config.ema.evaluate='ema' needs an EMA: set ema.decay"),
    (dict(decay=0.9, warmup="yes"), r"config.ema.warmup='yes' is invalid; valid: True or False"),
    (dict(decay=0.9, every=2), r"config.ema: unknown key\(s\) \['every'\]"),
])
def test_bad_ema_settings_name_the_value(ema, message):
  cfg = tiny_config()
  cfg.ema = dict(dict(decay=0.0, warmup=False, evaluate="raw"), **ema)  # replaced whole: no type casting
  with pytest.raises(ValueError, match=message):
    config_lib.validate(cfg)


# ---- momentum distillation

def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _reference_loss(zimg, ztxt, zimg_m, ztxt_m, scale, alpha):
  def one_way(a, b, am, bm):
    logits, logits_m = scale * a @ b.T, scale * am @ bm.T
    soft = np.exp(logits_m - logits_m.max(1, keepdims=True))
    soft /= soft.sum(1, keepdims=True)
    targets = alpha * soft + (1 - alpha) * np.eye(len(a))
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    return -(targets * logp).sum(1).mean()
  return (one_way(zimg, ztxt, zimg_m, ztxt_m) + one_way(ztxt, zimg, ztxt_m, zimg_m)) / 2


def test_distilled_loss_matches_a_hand_computation_and_alpha_zero_is_clip():
  rng = np.random.RandomState(0)
  zimg, ztxt, zimg_m, ztxt_m = (_unit(rng.randn(6, 8)).astype(np.float32) for _ in range(4))
  for alpha in (0.0, 0.4, 1.0):
    got = float(momentum.distilled_contrastive_loss(zimg, ztxt, zimg_m, ztxt_m, 7.0, alpha))
    assert got == pytest.approx(_reference_loss(zimg, ztxt, zimg_m, ztxt_m, 7.0, alpha), rel=1e-5)
  assert float(momentum.distilled_contrastive_loss(zimg, ztxt, zimg_m, ztxt_m, 7.0, 0.0)) == pytest.approx(
      float(softmax_contrastive_loss(zimg, ztxt, 7.0)), rel=1e-6)
  # No gradient reaches the momentum embeddings: they are targets.
  grads = jax.grad(lambda m: momentum.distilled_contrastive_loss(zimg, ztxt, m, ztxt_m, 7.0, 0.4))(zimg_m)
  assert not np.any(np.asarray(grads))


def test_momentum_contrastive_trains_and_needs_an_ema(tmp_path):
  objectives = {"momentum_contrastive": {"weight": 1.0, "alpha": 0.4}}
  final = train_and_evaluate(_ema_config(objectives=objectives, total_steps=3, ema=dict(decay=0.5, evaluate="raw")),
                             str(tmp_path / "md"))
  series = read_metrics(str(tmp_path / "md"))
  losses = [series["train/momentum_contrastive_loss"][s] for s in (1, 2, 3)]
  assert all(np.isfinite(losses)) and "eval/zeroshot/top1" in final
  with pytest.raises(ValueError, match=r"objectives.momentum_contrastive needs a momentum model, an EMA of the "
                                       r"weights: set ema.decay"):
    train_and_evaluate(tiny_config(objectives=objectives, total_steps=2, evals={}), str(tmp_path / "none"))
  with pytest.raises(ValueError, match=r"alpha=1.5 is invalid; valid: 0 <= alpha <= 1"):
    train_and_evaluate(_ema_config(objectives={"momentum_contrastive": {"weight": 1.0, "alpha": 1.5}},
                                   total_steps=2), str(tmp_path / "bad"))
