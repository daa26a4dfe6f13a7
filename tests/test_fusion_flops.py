"""The fusion head's passes in the train step's FLOP count: ITM's 3 pairs an example and MLM's one
pass, counted by hand on a tiny config (with what gets a gradient), against XLA's matmuls of the
lowered step, and the comparison harness then giving a BLIP arm fewer steps than CLIP for the same
FLOPs."""

import jax
import pytest
from flax import linen as nn

from conftest import tiny_config
from test_flops import xla_step_flops
from vljax import checkpoint_io, objectives
from vljax.compare import budget
from vljax.models import flops
from vljax.train import setup, state as state_lib, step_flops

# Widths that differ from the image tower's (32), so the cross-attention's keys and values (image
# width -> fusion width) are told apart from its queries.
FUSION = dict(share="none", variant="mu", depth=1, width=48, mlp_dim=96, num_heads=2)
BLIP = dict(decoder=dict(variant="mu", depth=1), fusion=dict(share="blip"))


def _config(objs, model=None, **overrides):
  cfg = tiny_config(evals={}, **overrides)
  cfg.model.update(model or {})
  cfg.objectives = objs
  return cfg


def _count(cfg) -> float:
  parts = setup.build(cfg)
  abstract = jax.eval_shape(lambda r: parts.model.init(r, **state_lib.dummy_inputs(cfg, 1))["params"],
                            jax.random.PRNGKey(0))
  total, why = step_flops.train_step_flops(cfg, parts.model_cfg, checkpoint_io.param_shapes(nn.unbox(abstract)))
  assert total is not None, why
  return total


def test_objectives_declare_their_passes():
  assert objectives.get_objective("itm").passes == (("itm_logits", 3.0),)
  assert objectives.get_objective("mlm").passes == (("mlm_logits", 1.0),)
  assert objectives.get_objective("softmax_contrastive").passes == ()
  assert step_flops.objective_passes(["softmax_contrastive", "itm", "mlm"]) == {"itm_logits": 3.0, "mlm_logits": 1.0}
  with pytest.raises(ValueError, match=r"'_bad_passes': passes=\{'itm_logits': 0\} must give"):
    objectives.register_objective("_bad_passes", reads=(), couples_examples=True, passes={"itm_logits": 0})


@pytest.mark.parametrize("frozen", [(), ("img/.*",)], ids=["all_trained", "image_tower_frozen"])
def test_fusion_passes_count_by_hand(frozen):
  contrastive = _count(_config({"softmax_contrastive": 1.0}, dict(fusion=FUSION), frozen=frozen))
  with_itm = _count(_config({"softmax_contrastive": 1.0, "itm": 1.0}, dict(fusion=FUSION), frozen=frozen))
  with_both = _count(_config({"softmax_contrastive": 1.0, "itm": 1.0, "mlm": 1.0}, dict(fusion=FUSION), frozen=frozen))
  batch, length, n, dv, w, m, vocab = 16, 12, (32 // 8) ** 2, 32, 48, 96, 128  # tiny_config, mu/8 tower; vocab padded
  assert setup.build(_config({"mlm": 1.0}, dict(fusion=FUSION))).model.fusion["vocab_size"] == vocab
  kv = 4 * n * dv * w  # cross-attention keys and values, reading the image tokens
  dense = 8 * length * w * w + 4 * length * w * m + 4 * length * w * w + kv
  attention = 4 * length * length * w + 4 * length * n * w
  # Every fusion weight trains: weight gradients 1x dense, input gradients 1x dense, less the keys'
  # and values' input gradients into the image tokens where the image tower is frozen (nothing
  # upstream of them wants one); attention 3x.
  block = 3 * dense + 3 * attention - (kv if frozen else 0)
  itm_head, mlm_head = 3 * (2 * w * 2), 3 * (2 * length * w * vocab)
  assert with_itm - contrastive == pytest.approx(batch * 3 * (block + itm_head), rel=1e-12)
  assert with_both - with_itm == pytest.approx(batch * (block + mlm_head), rel=1e-12)


def test_fusion_passes_match_xla_matmuls():
  # BLIP's sharing (the fusion passes run the decoder's blocks) with both objectives; share="none"
  # is the hand count's.
  cfg = _config({"softmax_contrastive": 1.0, "itm": 1.0, "mlm": 1.0, "captioning": 1.0}, BLIP, batch_size=8)
  analytic, xla, matmuls = xla_step_flops(cfg)
  # The same up to the B x B similarity matrices (contrastive loss, the negatives' draw).
  assert analytic == pytest.approx(matmuls, rel=0.01), analytic / matmuls
  assert analytic <= xla


def test_a_pass_the_model_does_not_count_leaves_no_count():
  cfg = _config({"softmax_contrastive": 1.0}, dict(fusion=FUSION))
  parts = setup.build(cfg)
  with pytest.raises(flops.UncountedPass, match=r"method 'generate'; valid: \['itm_logits', 'mlm_logits'\]"):
    flops.model_parts(parts.model_cfg, flops.Inputs.from_data(cfg.data), {"generate": 1.0})


def test_flops_matching_gives_a_blip_arm_fewer_steps_than_clip():
  arms = {"clip": _config({"softmax_contrastive": 1.0}, total_steps=100),
          "itc_itm": _config({"softmax_contrastive": 1.0, "itm": 1.0}, dict(fusion=FUSION), total_steps=100),
          "blip": _config({"softmax_contrastive": 1.0, "itm": 1.0, "captioning": 1.0}, BLIP, total_steps=100)}
  costs = {name: budget.step_cost(cfg, setup.build(cfg)) for name, cfg in arms.items()}
  steps = budget.matched_steps(dict(match="flops", like="clip"), costs)
  assert steps["clip"] == 100
  # Same towers: without the fusion passes the ITC+ITM arm would cost what CLIP does and get 100 steps.
  for arm in ("itc_itm", "blip"):
    assert steps[arm] == round(100 * costs["clip"].flops_per_step / costs[arm].flops_per_step) < 100, steps
