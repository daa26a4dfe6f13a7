"""Gradient accumulation: k micro-batches give the mean of the micro-batch losses and gradients."""

import jax
import numpy as np
import optax
import pytest
from flax import linen as nn

from conftest import tiny_config
from vljax import objectives
from vljax.data import pipeline, tokenizers
from vljax.parallel.mesh import make_mesh
from vljax.parallel.sharding import LOGICAL_RULES
from vljax.train import setup, state as state_lib, step as step_lib
from vljax.train.trainer import _global_batch


@pytest.mark.cross_path
def test_grad_accumulation_averages_micro_batches():
  cfg = tiny_config(evals={}, grad_accum_steps=2)
  cfg.schedule.name = "constant"
  parts = setup.build(cfg)
  local = next(iter(pipeline.make_train_dataset(cfg.data, tokenizers.get_tokenizer("shapes"),
                                                global_batch_size=cfg.batch_size, seed=0)))
  mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    state, shardings = state_lib.create_train_state(parts.model, parts.tx, cfg, mesh,
                                                    state_lib.dummy_inputs(cfg, 1))
    params0 = jax.device_get(state.params)
    opt0 = jax.device_get(state.opt_state)
    train_step = step_lib.make_train_step(parts.model, parts.tx, cfg, parts.schedule, mesh, shardings)
    new_state, metrics = train_step(state, _global_batch(local, mesh))

    def loss_fn(params, micro):
      with nn.logical_axis_rules(LOGICAL_RULES):
        out = parts.model.apply({"params": params}, image=micro["image"], text=micro["text"], train=True)
      return objectives.combined_loss(dict(cfg.objectives), out, micro)[0]

    # Micro-batch j holds examples j, j+2, j+4, ... (see gradcache.take_micro).
    micro = [jax.tree.map(lambda x, j=j: x[j::2], local) for j in range(2)]
    value_and_grad = jax.jit(jax.value_and_grad(loss_fn))
    losses, grads = zip(*(value_and_grad(params0, m) for m in micro))

    @jax.jit  # one program: eagerly, each op on each leaf would compile on its own
    def expected_update(grads, opt_state, params):
      updates, _ = parts.tx.update(jax.tree.map(lambda a, b: (a + b) / 2, *grads), opt_state, params)
      return optax.apply_updates(params, updates)

    expected = expected_update(grads, opt0, params0)
  # scanned micro-batches on a mesh vs two plain calls: every sum over examples in another order,
  # then Adam's first update (lr * g / (|g| + eps)) within 1% of lr
  np.testing.assert_allclose(metrics["loss"], np.mean(losses), rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), jax.device_get(new_state.params), expected)


def test_learned_temperature_at_the_cap_can_come_back_down():
  """A logit scale that crossed max_logit_scale (100) is clamped back to it after the update, and
  from there the gradient still lowers it: at scale 100 a fresh model's random similarities make
  confident wrong predictions, and the loss falls as the scale falls."""
  cfg = tiny_config(evals={})
  cfg.schedule.name = "constant"
  parts = setup.build(cfg)
  local = next(iter(pipeline.make_train_dataset(cfg.data, tokenizers.get_tokenizer("shapes"),
                                                global_batch_size=cfg.batch_size, seed=0)))
  mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
  cap = float(np.float32(np.log(100.0)))  # log(100) as a float32 param holds it
  with jax.set_mesh(mesh):
    state, shardings = state_lib.create_train_state(parts.model, parts.tx, cfg, mesh,
                                                    state_lib.dummy_inputs(cfg, 1))
    state = state.replace(params={**state.params, "t": jax.device_put(np.float32(cap + 0.5),
                                                                        state.params["t"].sharding)})
    train_step = step_lib.make_train_step(parts.model, parts.tx, cfg, parts.schedule, mesh, shardings)
    ts = []
    for _ in range(3):
      state, _ = train_step(state, _global_batch(local, mesh))
      ts.append(float(state.params["t"]))
  assert ts[0] <= cap, f"t={ts[0]} is above log(100) after an update"
  assert ts[2] < ts[0], f"the log scale did not come back down from the cap: {ts}"
