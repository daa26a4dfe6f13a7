"""ITC's feature queue (objectives.momentum_contrastive.queue_size, vljax/objectives/momentum.py): the
loss against a hand computation of ALBEF's, the queue's ring of slots, its life in the train state
(filled by every step and micro-batch, saved, restored bit for bit), bad sizes."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from conftest import checkpointed_state, sigterm_after_logging, tiny_config
from vljax import config as config_lib, objectives
from vljax.metrics import read_metrics
from vljax.objectives import momentum
from vljax.parallel.mesh import make_mesh
from vljax.parallel.sharding import LOGICAL_RULES
from vljax.train import setup, state as state_lib, step as step_lib
from vljax.train.trainer import train_and_evaluate

BATCH, QUEUE = 16, 40  # 40 slots: the third step's 16 rows wrap around the end of the ring


def _unit(x):
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _albef_loss(zimg, ztxt, zimg_m, ztxt_m, img_queue, txt_queue, scale, alpha):
  """ALBEF's ITC in numpy: online embeddings against [momentum batch; queue], soft targets from the
  momentum embeddings against the same, one-hot on the batch's diagonal."""
  def one_way(a, am, b_all):
    logits, logits_m = scale * a @ b_all.T, scale * am @ b_all.T
    soft = np.exp(logits_m - logits_m.max(1, keepdims=True))
    soft /= soft.sum(1, keepdims=True)
    targets = alpha * soft + (1 - alpha) * np.eye(len(a), b_all.shape[0])
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    return -(targets * logp).sum(1).mean()
  img_all, txt_all = np.concatenate([zimg_m, img_queue]), np.concatenate([ztxt_m, txt_queue])
  return (one_way(zimg, zimg_m, txt_all) + one_way(ztxt, ztxt_m, img_all)) / 2


def _embeddings(rng, n, dim=8):
  return [_unit(rng.randn(n, dim)) for _ in range(4)]


def test_queued_loss_matches_albef_and_leaves_empty_slots_out():
  rng = np.random.RandomState(0)
  zimg, ztxt, zimg_m, ztxt_m = _embeddings(rng, 6)
  stored_img, stored_txt = _unit(rng.randn(5, 8)), _unit(rng.randn(5, 8))
  # 3 of 5 slots filled; the other two hold values that must not count.
  queue = dict(image=stored_img, text=stored_txt, next=jnp.int32(3), filled=jnp.int32(3))
  for alpha in (0.0, 0.4):
    got = float(momentum.queued_contrastive_loss(zimg, ztxt, zimg_m, ztxt_m, queue, 7.0, alpha))
    want = _albef_loss(zimg, ztxt, zimg_m, ztxt_m, stored_img[:3], stored_txt[:3], 7.0, alpha)
    assert got == pytest.approx(want, rel=1e-5)
  empty = float(momentum.queued_contrastive_loss(zimg, ztxt, zimg_m, ztxt_m, None, 7.0, 0.4))
  assert empty == pytest.approx(_albef_loss(zimg, ztxt, zimg_m, ztxt_m, np.zeros((0, 8)), np.zeros((0, 8)), 7.0, 0.4),
                                rel=1e-5)
  assert float(momentum.queued_contrastive_loss(zimg, ztxt, zimg_m, ztxt_m, dict(queue, filled=jnp.int32(0)),
                                                7.0, 0.4)) == pytest.approx(empty, rel=1e-6)
  # Gradients reach the online embeddings only: the momentum ones and the queue are targets.
  grads = jax.grad(lambda *z: momentum.queued_contrastive_loss(*z, queue, 7.0, 0.4), argnums=(0, 1, 2, 3))(
      zimg, ztxt, zimg_m, ztxt_m)
  assert np.any(np.asarray(grads[0])) and np.any(np.asarray(grads[1]))
  assert not np.any(np.asarray(grads[2])) and not np.any(np.asarray(grads[3]))
  # The Q-Former's query form: one image embedding per query, the best query scores a pair.
  queries = _unit(rng.randn(6, 3, 8))
  query_queue = dict(queue, image=_unit(rng.randn(5, 3, 8)))
  assert np.isfinite(float(momentum.queued_contrastive_loss(queries, ztxt, queries, ztxt_m, query_queue, 7.0, 0.4)))


def test_enqueue_replaces_the_oldest_slots_around_the_ring():
  queue = momentum.init_queue({"img_emb": jax.ShapeDtypeStruct((4, 2), jnp.float32),
                               "txt_emb": jax.ShapeDtypeStruct((4, 2), jnp.float32)}, 4, {"queue_size": 6})
  rows = [np.full((4, 2), i + 1, np.float32) for i in range(3)]
  seen = []
  for r in rows:
    queue = momentum.enqueue(queue, r, -r)
    seen.append((int(queue["next"]), int(queue["filled"]), np.asarray(queue["image"][:, 0]).tolist()))
  assert seen == [(4, 4, [1, 1, 1, 1, 0, 0]), (2, 6, [2, 2, 1, 1, 2, 2]), (0, 6, [2, 2, 3, 3, 3, 3])]
  np.testing.assert_array_equal(queue["text"], -queue["image"])


@pytest.mark.parametrize("size, message", [
    (-1, r"queue_size=-1 is invalid; valid: 0 \(no queue\) or a whole number >= the global micro-batch"),
    (2.5, r"queue_size=2.5 is invalid"),
    (True, r"queue_size=True is invalid"),
    (8, r"queue_size=8 is smaller than the global micro-batch it enqueues every step \(16 rows: batch_size / "
        r"grad_accum_steps\); valid: 0 or >= 16"),
])
def test_bad_queue_sizes_name_the_value(size, message):
  outputs = {k: jax.ShapeDtypeStruct((16, 8), jnp.float32) for k in ("img_emb", "txt_emb")}
  with pytest.raises(ValueError, match=message):
    momentum.init_queue(outputs, 16, {"queue_size": size})
  assert momentum.init_queue(outputs, 16, {"queue_size": 0}) is None


def _queue_config(queue_size=QUEUE, **overrides):
  keys = dict(objectives={"momentum_contrastive": {"weight": 1.0, "alpha": 0.4, "queue_size": queue_size}},
              ema=dict(decay=0.5, warmup=False, evaluate="raw"), total_steps=4, evals={},
              checkpoint=dict(every=1, keep=10, async_save=False))
  keys.update(overrides)
  return tiny_config(**keys)


def _queue_at(workdir, step):
  return checkpointed_state(workdir, step)["objective_state"]["momentum_contrastive"]


@pytest.fixture(scope="module")
def queue_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("queue"))
  train_and_evaluate(_queue_config(), workdir)
  return workdir


def test_every_step_enqueues_its_batch_in_the_checkpointed_state(queue_run):
  queues = [_queue_at(queue_run, step) for step in (1, 2, 3, 4)]
  assert [(int(q["next"]), int(q["filled"])) for q in queues] == [(16, 16), (32, 32), (8, 40), (24, 40)]
  for q in queues:  # filled slots hold the momentum model's L2-normalised embeddings, the rest zeros
    filled = int(q["filled"])
    for side in ("image", "text"):
      np.testing.assert_allclose(np.linalg.norm(q[side][:filled], axis=-1), 1.0, rtol=1e-5)
      assert not np.any(q[side][filled:])
  # Step 3 wrote slots 32..39 and 0..7: the oldest rows, those of step 1, and left step 2's.
  np.testing.assert_array_equal(queues[2]["text"][16:32], queues[1]["text"][16:32])
  assert not np.allclose(queues[2]["text"][:8], queues[1]["text"][:8])
  losses = read_metrics(queue_run)["train/momentum_contrastive_loss"]
  assert all(np.isfinite(list(losses.values())))


def test_resume_restores_the_queue_exactly(queue_run, tmp_path, monkeypatch):
  """Preempted after step 2, resumed to 4: the same queue bit for bit as the straight run."""
  part = str(tmp_path / "part")
  sigterm_after_logging(monkeypatch, 2)
  train_and_evaluate(_queue_config(), part)
  monkeypatch.undo()
  train_and_evaluate(_queue_config(), part)
  resumed, straight = _queue_at(part, 4), _queue_at(queue_run, 4)
  for key in straight:
    np.testing.assert_array_equal(resumed[key], straight[key], err_msg=key)


def test_resuming_with_another_queue_names_it(queue_run):
  with pytest.raises(ValueError, match=r"the objectives' state \(a feature queue: objectives.<name>.queue_size\) "
                                       r"has another layout"):
    train_and_evaluate(_queue_config(queue_size=48, total_steps=5), queue_run)
  with pytest.raises(ValueError, match=r"queue_size=8 is smaller than the global micro-batch"):
    train_and_evaluate(_queue_config(queue_size=8), queue_run + "-small")


def test_each_micro_batch_sees_the_queue_its_predecessor_left():
  """grad_accum_steps=2 ("mean"): the step's loss is the mean of micro-batch 0 on the queue it was
  given and micro-batch 1 on the queue after micro-batch 0; the queue leaves with both enqueued."""
  cfg = _queue_config(grad_accum_steps=2, mesh=dict(data=1, fsdp=1, tensor=1))
  parts = setup.build(cfg)
  mesh = make_mesh(cfg.mesh, devices=jax.devices()[:1])
  state, _ = state_lib.create_train_state(parts.model, parts.tx, cfg, mesh, state_lib.dummy_inputs(cfg, 1))
  rng = np.random.RandomState(0)
  batch = {"image": jnp.asarray(rng.rand(BATCH, 32, 32, 3), jnp.float32),
           "text": jnp.asarray(rng.randint(1, 50, (BATCH, 12)), jnp.int32)}
  key = jax.random.PRNGKey(1)
  def under_rules(fn):
    def run(*args):
      with nn.logical_axis_rules(LOGICAL_RULES):
        return fn(*args)
    return jax.jit(run)
  grads_fn = under_rules(step_lib.make_grads_fn(parts.model, cfg))
  loss_fn = under_rules(step_lib.make_loss_fn(parts.model, cfg))
  with jax.set_mesh(mesh):
    loss, metrics, _ = grads_fn(state.params, {}, batch, key, state.ema_params, state.objective_state)
    queue = state.objective_state
    by_hand = []
    for i in range(2):
      micro = {k: v[i::2] for k, v in batch.items()}
      one, m = loss_fn(state.params, {}, micro, jax.random.fold_in(key, i), state.ema_params, queue)
      by_hand.append(float(one))
      queue = m[objectives.NEW_STATE]
  assert float(loss) == pytest.approx(np.mean(by_hand), rel=1e-5)
  after = metrics[objectives.NEW_STATE]["momentum_contrastive"]
  assert (int(after["next"]), int(after["filled"])) == (16, 16)
  for side in ("image", "text"):
    np.testing.assert_array_equal(after[side], queue["momentum_contrastive"][side])


def test_the_blip_recipe_keeps_a_queue_in_its_state():
  recipe = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "blip_shapes.py")
  cfg = config_lib.load_config(recipe, "queue=4096")
  cfg.evals = {}
  parts = setup.build(cfg)
  mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
  abstract, shardings = state_lib.plan_train_state(parts.model, parts.tx, cfg, mesh, state_lib.dummy_inputs(cfg, 1))
  queue = abstract.objective_state["momentum_contrastive"]
  embed_dim = cfg.model.contrastive.embed_dim
  assert queue["image"].shape == queue["text"].shape == (4096, embed_dim)
  assert jax.tree.structure(shardings.objective_state) == jax.tree.structure(abstract.objective_state)
  assert state_lib.plan_train_state(parts.model, parts.tx, config_lib.load_config(recipe), mesh,
                                    state_lib.dummy_inputs(cfg, 1))[0].objective_state is None
  for arg in ("queue=many", "arm=itc_itm,queue=4096"):
    with pytest.raises(ValueError, match=r"blip_shapes queue='(many|4096)'; valid: a whole number of examples"):
      config_lib.load_config(recipe, arg)
