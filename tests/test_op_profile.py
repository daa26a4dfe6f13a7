"""`python -m vljax.bench --profile_steps N`: a step's time by op, each traced kernel matched to the HLO
instruction it ran; and the activation floor the benchmark reports beside XLA's temporary memory."""

import jax
import jax.numpy as jnp
import pytest

from conftest import tiny_config
from vljax.bench import op_profile, train as bench
from vljax.train import setup, state as state_lib
from vljax.parallel.mesh import make_mesh


def _step(state, batch):
  """A state-passing 'step' like the trainer's: two matmuls and their elementwise work."""
  h = jnp.tanh(batch @ state["w1"])
  return {"w1": state["w1"] * 0.999, "w2": state["w2"] + h.mean()}, (h @ state["w2"]).sum()


def test_kernels_are_matched_to_their_instructions_and_kinds():
  state = {"w1": jnp.ones((64, 128)) * 0.01, "w2": jnp.ones((128, 32)) * 0.01}
  batch = jnp.ones((256, 64))
  compiled = jax.jit(_step).lower(state, batch).compile()
  instructions = op_profile.hlo_instructions(compiled.as_text())
  kinds = {i["kind"] for i in instructions.values()}
  assert kinds & {"dot", "fusion (matmul)", "fusion (matmul), library"}, kinds
  assert any(k.startswith("fusion (elementwise)") for k in kinds), kinds
  report, state = op_profile.profile_step(compiled, state, batch, steps=2)
  assert report["kernel_events"] >= 2 * 2  # at least the two matmuls, each step
  assert 0 < report["kernel_time_s"] and 0 < report["step_time_s"]
  assert sum(r["share"] for r in report["by_kind"]) == pytest.approx(1.0)
  assert sum(r["seconds"] for r in report["top_ops"]) <= report["kernel_time_s"] * (1 + 1e-9)
  assert all(r["name"] in instructions for r in report["top_ops"])
  assert state["w1"].shape == (64, 128)  # the state after the traced steps, for the caller to go on with
  table = op_profile.format_profile(report)
  assert "| kind of op | ms per step |" in table and report["top_ops"][0]["name"] in table
  with pytest.raises(ValueError, match="profile steps=0"):
    op_profile.profile_step(compiled, state, batch, steps=0)


def test_fusion_kinds_follow_what_they_call():
  text = """HloModule m, is_scheduled=true

%fused_dot (p0: f32[4,4], p1: f32[4,4]) -> f32[4,4] {
  %p0 = f32[4,4]{1,0} parameter(0)
  %p1 = f32[4,4]{1,0} parameter(1)
  ROOT %dot.1 = f32[4,4]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%outer (q0: f32[4,4], q1: f32[4,4]) -> f32[4,4] {
  %q0 = f32[4,4]{1,0} parameter(0)
  %q1 = f32[4,4]{1,0} parameter(1)
  ROOT %inner = f32[4,4]{1,0} fusion(%q0, %q1), kind=kOutput, calls=%fused_dot
}

%add_computation (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %add.2 = f32[] add(%a, %b)
}

%fused_reduce (r0: f32[4,4]) -> f32[4] {
  %r0 = f32[4,4]{1,0} parameter(0)
  %c = f32[] constant(0)
  ROOT %reduce.3 = f32[4]{0} reduce(%r0, %c), dimensions={1}, to_apply=%add_computation
}

ENTRY %main (x: f32[4,4], y: f32[4,4]) -> (f32[4,4], f32[4]) {
  %x = f32[4,4]{1,0} parameter(0)
  %y = f32[4,4]{1,0} parameter(1)
  %mm = f32[4,4]{1,0} fusion(%x, %y), kind=kCustom, calls=%outer, metadata={op_name="jit(f)/dot_general"}
  %rd = f32[4]{0} fusion(%mm), kind=kInput, calls=%fused_reduce
  %tanh.4 = f32[4,4]{1,0} tanh(%mm)
  ROOT %t = (f32[4,4]{1,0}, f32[4]{0}) tuple(%tanh.4, %rd)
}
"""
  got = op_profile.hlo_instructions(text)
  assert got["mm"] == {"kind": "fusion (matmul), library", "op_name": "jit(f)/dot_general"}
  assert got["rd"]["kind"] == "fusion (reduce)"
  assert got["tanh.4"]["kind"] == "tanh" and got["t"]["kind"] == "tuple"


def test_activation_floor_shrinks_with_what_remat_saves():
  """Autodiff residuals of one batch, params excluded: no remat keeps every activation; saving only
  the matmul outputs keeps fewer; recomputing each block keeps only the blocks' inputs."""
  sizes, state = {}, None
  mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
  for remat in ("none", "minimal", "full"):
    cfg = tiny_config(evals={})
    cfg.model.remat = remat
    parts = setup.build(cfg)
    with jax.set_mesh(mesh):
      if state is None:  # remat changes no param: one state serves the three models
        state = state_lib.create_train_state(parts.model, parts.tx, cfg, mesh, state_lib.dummy_inputs(cfg, 1))[0]
        batch = bench.synthetic_batch(cfg, parts.tokenizer, mesh)
      sizes[remat] = bench.activation_bytes(parts.model, cfg, state, batch)
  assert sizes["none"] > sizes["minimal"] > sizes["full"] > 0, sizes
