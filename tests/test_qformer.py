"""BLIP-2's Q-Former (vljax/models/qformer.py, blip2.py): what each attention mask lets see, ITC in query
form (max over queries, distributed equal to one device), and stage 1's three objectives in one step."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from vljax.models import get_model, llava
from vljax.models.qformer import QFormer, attention_mask
from vljax.objectives import all_gather_softmax_contrastive_loss, softmax_contrastive_loss
from vljax.parallel.mesh import make_mesh

Q, L, W, VOCAB = 4, 6, 32, 50
QFORMER_TEXT_HALF = llava.QFORMER_TEXT_HALF  # unused by stage 2, frozen there


@pytest.fixture(scope="module")
def qformer():
  module = QFormer(W, depth=2, mlp_dim=64, num_heads=2, vocab_size=VOCAB, max_len=L, num_queries=Q)
  memory = jax.random.normal(jax.random.PRNGKey(1), (2, 9, 24))
  ids = jnp.array([[1, 5, 6, 7, 2, 0], [1, 8, 9, 2, 0, 0]])
  params = module.init(jax.random.PRNGKey(0), memory, ids, "bidirectional")
  return module, params, memory, ids


def _run(qformer, ids, mode, memory=None):
  module, params, default_memory, _ = qformer
  return module.apply(params, default_memory if memory is None else memory, ids, mode)


def test_unimodal_mask_queries_and_text_never_see_each_other(qformer):
  _, _, memory, ids = qformer
  queries, text = _run(qformer, ids, "unimodal")
  changed = ids.at[0, 2].set(11)
  queries2, text2 = _run(qformer, changed, "unimodal")
  np.testing.assert_array_equal(queries, queries2)  # a text token changes no query output
  # ... and the image changes no text output; the halves equal the queries-alone and text-alone passes.
  _, text3 = _run(qformer, ids, "unimodal", memory=memory + 1.0)
  np.testing.assert_allclose(text, text3, atol=1e-6)
  np.testing.assert_allclose(queries, _run(qformer, None, "unimodal")[0], atol=1e-5)
  text_alone = _run(qformer, ids, "text")[1]
  np.testing.assert_allclose(text[ids != 0], text_alone[ids != 0], atol=1e-5)


def test_causal_mask_text_sees_queries_and_earlier_text_only(qformer):
  _, _, memory, ids = qformer
  queries, text = _run(qformer, ids, "causal")
  for j in range(1, 4):
    _, text2 = _run(qformer, ids.at[0, j].set(11), "causal")
    np.testing.assert_array_equal(text[0, :j], text2[0, :j])  # position i < j never sees j
    assert not np.allclose(text[0, j:4], text2[0, j:4])
  np.testing.assert_array_equal(queries, _run(qformer, ids.at[0, 1].set(11), "causal")[0])  # queries see no text
  _, text3 = _run(qformer, ids, "causal", memory=memory + 1.0)  # text sees the queries, which see the image
  assert not np.allclose(text[0, 0], text3[0, 0])


def test_bidirectional_mask_everything_sees_everything_but_padding(qformer):
  _, _, _, ids = qformer
  queries, text = _run(qformer, ids, "bidirectional")
  queries2, text2 = _run(qformer, ids.at[0, 3].set(11), "bidirectional")
  assert not np.allclose(queries[0], queries2[0]) and not np.allclose(text[0, 0], text2[0, 0])
  np.testing.assert_array_equal(queries[1], queries2[1])
  queries3, text3 = _run(qformer, ids[:, :5], "bidirectional")  # one pad position fewer: pad keys are unread
  np.testing.assert_allclose(queries3, queries, atol=1e-5)
  np.testing.assert_allclose(text3[:, :4], text[:, :4], atol=1e-5)
  mask = attention_mask("causal", 2, jnp.array([[True, True, False]]))[0, 0]
  np.testing.assert_array_equal(mask, [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0],
                                       [1, 1, 1, 1, 0]])
  with pytest.raises(ValueError, match=r"Unknown Q-Former mask 'full'; valid: \['bidirectional', 'causal', 'unimodal'\]"):
    attention_mask("full", 2, jnp.ones((1, 3), bool))


def test_query_form_contrastive_loss_is_the_best_querys_and_distributed_equals_one_device():
  key1, key2 = jax.random.split(jax.random.PRNGKey(3))
  zimg = jax.random.normal(key1, (16, Q, 8))
  zimg = zimg / jnp.linalg.norm(zimg, axis=-1, keepdims=True)
  ztxt = jax.random.normal(key2, (16, 8))
  ztxt = ztxt / jnp.linalg.norm(ztxt, axis=-1, keepdims=True)
  sims = 10.0 * np.max(np.einsum("iqd,jd->ijq", zimg, ztxt), axis=-1)
  logp_i2t = sims - np.log(np.exp(sims).sum(1, keepdims=True))
  logp_t2i = sims.T - np.log(np.exp(sims.T).sum(1, keepdims=True))
  want = -(np.trace(logp_i2t) + np.trace(logp_t2i)) / 32
  got = softmax_contrastive_loss(zimg, ztxt, 10.0)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  mesh = make_mesh({"data": 8})
  with jax.set_mesh(mesh):
    distributed = jax.jit(lambda a, b: all_gather_softmax_contrastive_loss(a, b, 10.0, mesh=mesh))(zimg, ztxt)
  np.testing.assert_allclose(distributed, got, rtol=1e-5)


def _stage1_config():
  # The evaluators score query-form embeddings by the best query; retrieval re-ranks with the ITM head too.
  evals = dict(zeroshot=dict(every=2, num_examples=16), retrieval=dict(every=2, num_examples=16, itm_k=4),
               binding=dict(every=2, num_examples=16))
  cfg = tiny_config(evals=evals, total_steps=2, batch_size=8)
  cfg.model = dict(name="qformer", image=dict(variant="mu/8", depth=1, pool="gap", posemb="sincos2d"),
                   text=dict(variant="mu", depth=2), num_queries=4, embed_dim=16)
  cfg.objectives = {"softmax_contrastive": 1.0, "itm": 1.0, "captioning": 1.0}
  cfg.checkpoint = dict(every=2, keep=1, async_save=False)
  return cfg


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
  """A stage-1 run, trained once: (its workdir, its config)."""
  from vljax.train.trainer import train_and_evaluate
  workdir, cfg = tmp_path_factory.mktemp("qformer") / "stage1", _stage1_config()
  train_and_evaluate(cfg, str(workdir))
  return workdir, cfg


def test_stage1_trains_itc_itg_and_itm_in_one_step(stage1):
  workdir, _ = stage1
  with open(workdir / "metrics.jsonl") as f:
    last = [json.loads(line) for line in f if '"train/loss"' in line][-1]
  assert last["step"] == 2
  for name in ("softmax_contrastive_loss", "itm_loss", "captioning_loss", "itm_acc"):
    assert np.isfinite(last[f"train/{name}"]), name
  # ITM over 3 pairs an example (1 match, 2 not): cross-entropy near log 2 at the start.
  assert 0.3 < last["train/itm_loss"] < 1.5
  with open(workdir / "metrics.jsonl") as f:
    evals = {k: v for line in f for k, v in json.loads(line).items() if k.startswith("eval/")}
  for name in ("zeroshot/top1", "retrieval/i2t_r1", "retrieval/itm_i2t_r1", "binding/acc"):
    assert 0 <= evals[f"eval/{name}"] <= 1, name


def test_query_form_scores_are_the_best_querys():
  from vljax.inference import embedding_scores
  rng = np.random.default_rng(0)
  zimg, ztxt = rng.normal(size=(300, Q, 8)), rng.normal(size=(7, 8))
  want = np.array([[max(zimg[i, q] @ ztxt[j] for q in range(Q)) for j in range(7)] for i in range(300)])
  np.testing.assert_allclose(embedding_scores.score_matrix(zimg, ztxt), want, rtol=1e-10)
  np.testing.assert_allclose(embedding_scores.pair_scores(zimg[:7], ztxt), np.diag(want[:7]), rtol=1e-10)
  np.testing.assert_allclose(embedding_scores.score_matrix(zimg[:, 0], ztxt), zimg[:, 0] @ ztxt.T)


def test_bad_qformer_configs_name_the_value():
  base = _stage1_config().model.to_dict()
  for change, message in ((dict(num_queries=0), r"num_queries=0 is invalid; valid: an integer >= 1"),
                          (dict(cross_every=1.5), r"cross_every=1.5 is invalid"),
                          (dict(queries=4), r"Unknown qformer config keys \['queries'\]"),
                          (dict(image=dict(variant="mu/8", pool="map")), r"qformer reads the image tower's tokens")):
    with pytest.raises(ValueError, match=message):
      get_model(dict(base, **change, text=dict(base["text"], vocab_size=64, max_len=12)))


def test_stage2_soft_prompts_a_frozen_lm_from_the_stage1_qformer(stage1, tmp_path):
  """LLaVA with projector="qformer" (BLIP-2 stage 2): the stage-1 Q-Former's params load whole, its query
  outputs become the soft prompt of a frozen LM, and captions decode with the KV cache."""
  import vljax
  from flax import traverse_util
  from vljax.checkpoint_io import load_params
  from vljax.train.trainer import train_and_evaluate
  stage1_dir, stage1 = stage1
  cfg = tiny_config(evals=dict(caption=dict(every=2, num_examples=8, num_references=2,
                                            decode=dict(method="greedy", max_len=8))), total_steps=2, batch_size=8)
  cfg.model = dict(name="llava", image=stage1.model.image.to_dict(), text=dict(variant="mu", max_len=48),
                   projector="qformer", qformer=dict(stage1.model.text.to_dict(), num_queries=4,
                                                     max_len=stage1.data.max_len))
  cfg.objectives = {"captioning": 1.0}
  cfg.data.update(format="vlm", chunks=1, max_len=24)
  cfg.init_from = dict(workdir="", subtree="", step=-1, sources=(f"{stage1_dir}:img,qformer",))
  cfg.frozen = ("img/.*", "txt/.*", "lm/.*", "logits/.*") + QFORMER_TEXT_HALF
  cfg.checkpoint = dict(every=2, keep=1, async_save=False)
  train_and_evaluate(cfg, str(tmp_path / "stage2"))
  before = traverse_util.flatten_dict(load_params(str(stage1_dir))[0], sep="/")
  after = traverse_util.flatten_dict(load_params(str(tmp_path / "stage2"))[0], sep="/")
  qformer = [k for k in before if k.startswith("qformer/")]
  assert qformer and all(k in after and after[k].shape == before[k].shape for k in qformer)
  assert np.array_equal(after["qformer/encoder/block_0/mlp/fc1/kernel"], before["qformer/encoder/block_0/mlp/fc1/kernel"])
  assert cfg.model.qformer and QFORMER_TEXT_HALF == llava.QFORMER_TEXT_HALF
  assert not np.array_equal(after["qformer/queries"], before["qformer/queries"])  # the bridge trains
  with open(tmp_path / "stage2" / "metrics.jsonl") as f:
    assert any("eval/caption/cider" in json.loads(line) for line in f)
  model = vljax.load(str(tmp_path / "stage2"))
  images = list(np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8))
  assert len(model.caption(images)) == 2
