"""Hard-negative twins (NegCLIP): the twins themselves, the batch format, both losses (their plain
forms when no twin is valid; their distributed forms on 8 devices), and a training run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from conftest import tiny_config
from vljax import objectives
from vljax.data import caption_twins, pipeline, tokenizers
from vljax.metrics import read_metrics
from vljax.objectives import hard_negatives
from vljax.parallel.mesh import make_mesh
from vljax.train import gradcache
from vljax.train.trainer import train_and_evaluate

TWINS = [
    ("a large blue cross is under a small green circle",
     "a large green cross is under a small blue circle", "a large blue cross is over a small green circle"),
    ("there is an orange circle right of a black square",
     "there is a black circle right of an orange square", "there is an orange circle left of a black square"),
    ("a small green triangle to the left of a green diamond",
     "a small green diamond to the left of a green triangle", "a small green triangle to the right of a green diamond"),
    ("an image of a yellow triangle", "an image of a purple triangle", None),  # one object: no relation
    ("a red star left of a red star", None, "a red star right of a red star"),  # alike: no swap
    ("a blurry photo of something", None, None),  # noise: no object named
]


@pytest.mark.parametrize("caption, attribute, relation", TWINS)
def test_twins_swap_the_binding_and_nothing_else(caption, attribute, relation):
  assert caption_twins.attribute_twin(caption) == attribute
  assert caption_twins.relation_twin(caption) == relation


def test_the_format_carries_each_captions_twins_and_which_exist():
  cfg = tiny_config(evals={})
  cfg.data.format = "hard_negatives"
  cfg.data.max_len = pipeline.DEFAULT_MAX_LEN  # whole captions: a cut one has other twins
  tok = tokenizers.get_tokenizer("shapes")
  batch = next(iter(pipeline.make_train_dataset(cfg.data, tok, global_batch_size=16, seed=0)))
  b, length = batch["text"].shape
  assert batch["neg_text"].shape == (b, len(caption_twins.TWINS), length)
  assert batch["neg_mask"].shape == (b, len(caption_twins.TWINS)) and batch["neg_mask"].dtype == bool
  captions = tok.decode(batch["text"])
  for i, caption in enumerate(captions):
    for k, make in enumerate(caption_twins.TWINS.values()):
      twin = make(caption)
      assert batch["neg_mask"][i, k] == (twin is not None)
      if twin is not None:
        assert tok.decode(batch["neg_text"][i, k:k + 1])[0] == twin
  assert batch["neg_mask"].any() and not batch["neg_mask"].all()  # one-object scenes have no relation twin


class _Tower:
  """Stands in for ModelAccess: a text "tower" that embeds ids by a fixed random table."""

  def __init__(self, table):
    self.table = table

  def apply(self, text, pass_name=None):
    emb = self.table[text].mean(axis=1)
    return {"txt_emb": emb / jnp.linalg.norm(emb, axis=-1, keepdims=True)}


def _inputs(batch_size=16, k=2, length=6, dim=8, seed=0):
  rng = np.random.default_rng(seed)
  unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)  # noqa: E731
  outputs = {"img_emb": unit(rng.normal(size=(batch_size, dim))), "txt_emb": unit(rng.normal(size=(batch_size, dim))),
             "logit_scale": np.float32(10.0), "logit_bias": np.float32(-5.0)}
  batch = {"neg_text": rng.integers(0, 50, (batch_size, k, length)).astype(np.int32),
           "neg_mask": rng.random((batch_size, k)) < 0.6}
  return outputs, batch, _Tower(jnp.asarray(rng.normal(size=(50, dim)), jnp.float32))


@pytest.mark.parametrize("name", ["softmax_hard_negatives", "sigmoid_hard_negatives"])
def test_without_valid_twins_the_loss_is_the_plain_one_and_twins_raise_it(name):
  outputs, batch, tower = _inputs()
  plain = objectives.call_objective(name.replace("hard_negatives", "contrastive"), outputs, {}, {})[0]
  none_valid = dict(batch, neg_mask=np.zeros_like(batch["neg_mask"]))
  np.testing.assert_array_equal(objectives.call_objective(name, outputs, none_valid, {}, model=tower)[0], plain)
  assert objectives.call_objective(name, outputs, batch, {}, model=tower)[0] > plain
  grads = jax.grad(lambda o: objectives.call_objective(name, o, batch, {}, model=tower)[0])(outputs)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))  # masked twins' -inf logits give no NaN


@pytest.mark.cross_path
@pytest.mark.parametrize("name", ["softmax_hard_negatives", "sigmoid_hard_negatives"])
def test_distributed_form_equals_single_device(name):
  """The loss and its gradient with the batch sharded over 8 devices, against one device."""
  outputs, batch, tower = _inputs(batch_size=16)

  def loss(o, b):
    return objectives.call_objective(name, o, b, {}, model=tower)[0]

  value_and_grad = jax.value_and_grad(loss)
  want = jax.jit(value_and_grad)(outputs, batch)
  mesh = make_mesh({"data": 8})
  rows = NamedSharding(mesh, P("data"))
  sharded = ({k: jax.device_put(v, rows if np.ndim(v) else NamedSharding(mesh, P())) for k, v in outputs.items()},
             {k: jax.device_put(v, rows) for k, v in batch.items()})
  got = jax.jit(value_and_grad)(*sharded)
  # 8 devices add the batch's terms in another order: float32 rounding of sums of 16 x 48 terms
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got[1], want[1])


def test_gradcache_and_the_ring_form_are_refused_at_start():
  cfg = tiny_config(evals={}, grad_accum_steps=2, grad_accum_mode="gradcache")
  cfg.objectives = {"softmax_hard_negatives": 1.0}
  with pytest.raises(ValueError, match=r"cannot split objective\(s\) \['softmax_hard_negatives'\]"):
    gradcache.check_objectives(cfg.objectives)
  cfg = tiny_config(evals={}, loss_impl="shard_map")
  cfg.objectives = {"sigmoid_hard_negatives": 1.0}
  cfg.model.contrastive.logit_bias_init = -10.0
  cfg.data.format = "hard_negatives"
  with pytest.raises(ValueError, match=r"objectives.sigmoid_hard_negatives has no loss_impl='shard_map' form; "
                                       r"valid: loss_impl in \['gather'\]"):
    train_and_evaluate(cfg, "/nonexistent/never-written")


@pytest.mark.slow
def test_negclip_trains_and_logs_the_twin_fraction(tmp_path):
  cfg = tiny_config(evals={}, total_steps=3)
  cfg.objectives = {"softmax_hard_negatives": 1.0}
  cfg.data.format = "hard_negatives"
  cfg.checkpoint.every = 0
  train_and_evaluate(cfg, str(tmp_path))
  m = read_metrics(tmp_path)
  assert sorted(m["train/softmax_hard_negatives_loss"]) == [1, 2, 3]
  assert "train/softmax_contrastive_loss" not in m
  assert 0 < m["train/hard_negative_fraction"][3] < 1
