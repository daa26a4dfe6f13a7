"""BLIP's objectives in the train step: each combination trains from config (every objective's loss
finite and falling on a tiny model), the recipe's arms build, and the ITM (and MLM) loss and
gradients on 8 simulated devices equal the single-device ones, given the same random stream."""

import os

import jax
import numpy as np
import pytest

import first_step
from conftest import tiny_config, train_on_one_device
from vljax import config as config_lib
from vljax.data import pipeline
from vljax.parallel.mesh import make_mesh
from vljax.train import setup, state as state_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DECODER = dict(variant="mu", depth=1)
# name -> (model keys added to tiny_config's CLIP, objectives)
COMBINATIONS = {
    "blip": (dict(decoder=DECODER, fusion=dict(share="blip")),
             {"softmax_contrastive": 1.0, "itm": 1.0, "captioning": 1.0}),
    "itc_itm": (dict(fusion=dict(share="none", variant="mu", depth=1)), {"softmax_contrastive": 1.0, "itm": 1.0}),
    "itc_itm_mlm": (dict(fusion=dict(share="none", variant="mu", depth=1)),
                    {"softmax_contrastive": 1.0, "itm": 1.0, "mlm": 1.0}),
}


def _config(name, objectives=None):
  keys, default = COMBINATIONS[name]
  cfg = tiny_config(evals={})
  cfg.model.update(keys)
  cfg.objectives = objectives or default  # assigned: update() would merge into the default objective
  cfg.schedule.name = "constant"  # a real update from step 1
  return cfg


def _batch(cfg, parts):
  return next(iter(pipeline.make_train_dataset(cfg.data, parts.tokenizer, global_batch_size=cfg.batch_size, seed=0)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["blip", "itc_itm_mlm"])  # itc_itm: a part of each
def test_each_combination_trains(name):
  """Six steps on one batch: every objective's loss is finite and lower at the end."""
  cfg = _config(name)
  parts = setup.build(cfg)
  metrics = train_on_one_device(cfg, parts, _batch(cfg, parts), steps=6)
  history = [{k: float(m[f"{k}_loss"]) for k in cfg.objectives} for m in metrics]
  for objective in cfg.objectives:
    losses = [h[objective] for h in history]
    assert np.isfinite(losses).all() and losses[-1] < losses[0], (objective, losses)


@pytest.mark.parametrize("arm", ["blip", "itc_itm", "itc_mlm"])
def test_recipe_arms_build(arm):
  cfg = config_lib.load_config(os.path.join(ROOT, "configs", "blip_shapes.py"), f"arm={arm}")
  cfg.evals = {}
  parts = setup.build(cfg)
  itc = "momentum_contrastive" if arm == "blip" else "softmax_contrastive"  # BLIP's ITC distils from its EMA
  assert itc in cfg.objectives and parts.model.fusion and (cfg.ema.decay > 0) == (arm == "blip")
  with pytest.raises(ValueError, match=r"arm='coca'; valid: \['blip', 'itc_itm', 'itc_mlm'\]"):
    config_lib.load_config(os.path.join(ROOT, "configs", "blip_shapes.py"), "arm=coca")


@pytest.mark.cross_path
def test_sharded_step_equals_single_device():
  """The first step's loss and every gradient on data x fsdp x tensor (8 devices) against one device,
  from the same initial state and step key: the same negatives and masks are drawn. ITM and MLM
  through BLIP's shared fusion blocks, one program."""
  cfg = _config("blip", {"itm": 1.0, "mlm": 1.0})
  parts = setup.build(cfg)
  batch = _batch(cfg, parts)
  one_device = make_mesh({"data": 1}, devices=jax.devices()[:1])
  with jax.set_mesh(one_device):
    initial = jax.device_get(state_lib.create_train_state(parts.model, parts.tx, cfg, one_device,
                                                          state_lib.dummy_inputs(cfg, 1))[0])
  want = first_step.first_step(cfg, one_device, batch, initial)
  got = first_step.first_step(cfg, make_mesh({"data": 2, "fsdp": 2, "tensor": 2}), batch, initial)
  assert set(got) == set(want)
  np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
  grads = [k for k in want if k.startswith("grad/")]
  assert any("itm_head" in k for k in grads) and np.abs(want["grad/itm_head/kernel"]).max() > 0
  for key in grads:
    scale = np.abs(want[key]).max()
    np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-5 * scale + 1e-9, err_msg=key)
