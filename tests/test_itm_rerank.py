"""ITM re-ranking (BLIP's k_test) in the retrieval and zero-shot evaluators: it reorders only within
each query's top k (the rest keep their first-stage order below); an ITM that knows the answers
lifts R@1 to 1.0 exactly where the right answer is in the top k; the evaluators' re-ranked metrics
against a dense reference on a tiny BLIP model, and end to end after training; the start-up errors."""

import json

import jax
import numpy as np
import pytest

from conftest import tiny_config
from vljax import evals, models
from vljax.evals import itm_rerank, requirements
from vljax.evals.retrieval import RetrievalEvaluator, direction_metrics, rank_metrics
from vljax.evals.zeroshot import ZeroShotEvaluator, shapes_accuracy, topk_accuracy
from vljax.inference.runner import ModelRunner
from vljax.parallel.mesh import make_mesh
from vljax.train import setup, state as state_lib

FUSION = dict(share="none", variant="mu", depth=1)


# ---- the re-ranking itself, on controlled scores and a controlled ITM

def test_top_k_puts_nan_last_and_wrong_candidates_first_at_a_tie():
  scores = np.array([[0.9, 0.5, 0.5, np.nan, 0.1]])
  assert itm_rerank.top_k(scores, np.array([[0, 1, 0, 0, 0]], bool), 2).tolist() == [[1, 0, 1, 0, 0]]
  assert itm_rerank.top_k(scores, np.array([[0, 0, 1, 0, 0]], bool), 2).tolist() == [[1, 1, 0, 0, 0]]
  assert itm_rerank.top_k(scores, np.array([[0, 0, 0, 1, 0]], bool), 4).tolist() == [[1, 1, 1, 0, 1]]


def test_reranking_reorders_only_within_the_top_k():
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(20, 30)).astype(np.float32)
  right = np.eye(20, 30, dtype=bool)
  itm = rng.normal(scale=5.0, size=scores.shape)
  out = itm_rerank.rerank(scores, right, 7, lambda r, c: itm[r, c])
  for row in range(20):
    first = np.argsort(-scores[row], kind="stable")
    top, rest = first[:7], first[7:]
    order = np.argsort(-out[row], kind="stable")
    assert set(order[:7]) == set(top)  # the same candidates on top, now in ITM + score order
    np.testing.assert_array_equal(order[:7], top[np.argsort(-(itm[row, top] + scores[row, top]), kind="stable")])
    np.testing.assert_array_equal(order[7:], rest)  # the rest keep the first-stage order, below
    assert out[row, top].min() > out[row, rest].max()
  np.testing.assert_allclose(out[right], np.where(itm_rerank.top_k(scores, right, 7)[right],
                                                  scores[right] + itm[right], out[right]))


def _oracle(right):
  """An ITM that knows the answers: a large match logit for a right pair, a low one otherwise."""
  return lambda rows, cols: np.where(right[rows, cols], 10.0, -10.0)


def test_an_oracle_itm_hits_exactly_where_the_answer_is_in_the_top_k():
  rng = np.random.default_rng(1)
  n = 24
  scores = rng.uniform(-1, 1, size=(n, n)) + 0.5 * np.eye(n)  # a first stage better than chance
  own = np.eye(n, dtype=bool)
  first = rank_metrics(scores, np.arange(n))
  for k in (1, 3, 6):
    i2t, t2i = itm_rerank.rerank_both_ways(scores, own, k, _oracle(own))
    metrics = {**direction_metrics("i2t", i2t, own), **direction_metrics("t2i", t2i, own.T)}
    for direction, s, right in (("i2t", scores, own), ("t2i", scores.T, own.T)):
      reach = (itm_rerank.top_k(s, right, k) & right).any(axis=1)
      assert 0 < reach.mean() < 1 or k == 1
      assert metrics[f"{direction}_r1"] == pytest.approx(reach.mean())  # a hit exactly where it was in reach
      # A miss beyond the top k ranks where it did (below k wrong ones, then in first-stage order).
      assert metrics[f"{direction}_r10"] == first[f"{direction}_r10"]
  i2t, t2i = itm_rerank.rerank_both_ways(scores, own, n, _oracle(own))
  assert direction_metrics("i2t", i2t, own)["i2t_r1"] == direction_metrics("t2i", t2i, own.T)["t2i_r1"] == 1.0
  # Zero-shot: the label outside an image's top k stays a miss however sure the ITM is.
  labels = np.array([0, 1, 2])
  cls = np.array([[0.9, 0.8, 0.1, 0.0], [0.9, 0.8, 0.1, 0.0], [0.9, 0.8, 0.1, 0.0]])
  right = np.arange(4)[None] == labels[:, None]
  out = itm_rerank.rerank(cls, right, 2, _oracle(right))
  assert topk_accuracy(out, labels, ks=(1,))[1] == pytest.approx(2 / 3)  # rows 0, 1 lifted; row 2 out of reach
  assert topk_accuracy(cls, labels, ks=(1,))[1] == pytest.approx(1 / 3)


def test_reranked_ties_and_nan_count_against_the_model():
  scores = np.zeros((3, 3))  # collapsed first stage: every candidate ties
  own = np.eye(3, dtype=bool)
  i2t, _ = itm_rerank.rerank_both_ways(scores, own, 2, lambda r, c: np.zeros(len(r)))
  assert direction_metrics("i2t", i2t, own)["i2t_r1"] == 0.0  # the right ones left out of the top k at the tie
  i2t, _ = itm_rerank.rerank_both_ways(np.eye(3), own, 2, lambda r, c: np.full(len(r), np.nan))
  assert direction_metrics("i2t", i2t, own)["i2t_r1"] == 0.0  # a NaN match logit is a miss


# ---- the evaluators on a tiny BLIP model

def _blip_config(**overrides):
  cfg = tiny_config(**{"evals": {}, **overrides})
  cfg.model.update(fusion=FUSION)
  cfg.objectives = {"softmax_contrastive": 1.0, "itm": 1.0}
  return cfg


@pytest.fixture(scope="module")
def blip():
  """(config, runner, params): a tiny BLIP model at its initialisation, on one device (the runner's
  mesh, which the tests enter)."""
  cfg = _blip_config()
  parts = setup.build(cfg)
  mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
  params = jax.jit(parts.model.init)(jax.random.PRNGKey(0), **state_lib.dummy_inputs(cfg, 2))["params"]
  return cfg, ModelRunner(parts.model, mesh, 16, parts.tokenizer), jax.tree.map(np.asarray, params)


def _evaluator(cls, cfg, **settings):
  return cls({"num_examples": 16, **settings}, tokenizer=setup.build(cfg).tokenizer, max_len=cfg.data.max_len,
             data=cfg.data)


@pytest.mark.cross_path
def test_retrieval_reranks_like_the_dense_reference(blip):
  cfg, runner, params = blip
  with jax.set_mesh(runner.mesh):
    _check_retrieval(cfg, runner, params)


def _check_retrieval(cfg, runner, params):
  out = {k: _evaluator(RetrievalEvaluator, cfg, itm_k=k)(runner, params) for k in (1, 5, 16)}
  ev = _evaluator(RetrievalEvaluator, cfg)
  assert not any(name.startswith("itm_") for name in ev(runner, params))  # off by default
  scores, _ = ev.scores(runner, params)
  # Every pair through the runner at once (no streaming, no pair selection) + the cosine.
  rows, cols = np.divmod(np.arange(16 * 16), 16)
  memory = runner.fusion_memory(params, ev.images.images)
  logits = runner.pair_itm_logits(params, memory, ev.tokens, rows, cols)[:, 1].reshape(16, 16)
  assert {k[4:]: v for k, v in out[16].items() if k.startswith("itm_")} == pytest.approx(
      rank_metrics(logits + scores, np.arange(16)))
  own = np.eye(16, dtype=bool)
  i2t, t2i = itm_rerank.rerank_both_ways(scores, own, 5, lambda r, c: logits[r, c])
  assert {k[4:]: v for k, v in out[5].items() if k.startswith("itm_")} == pytest.approx(
      {**direction_metrics("i2t", i2t, own), **direction_metrics("t2i", t2i, own.T)})
  contrastive = {k: v for k, v in out[16].items() if not k.startswith("itm_")}
  assert contrastive == pytest.approx(rank_metrics(scores, np.arange(16)))  # the first stage's, unchanged
  for direction in ("i2t", "t2i"):  # k=1: the first stage's best stays first
    assert out[1][f"itm_{direction}_r1"] == out[1][f"{direction}_r1"]


@pytest.mark.cross_path
def test_zeroshot_reranks_with_the_mean_over_a_class_prompts(blip):
  cfg, runner, params = blip
  with jax.set_mesh(runner.mesh):
    _check_zeroshot(cfg, runner, params)


def _check_zeroshot(cfg, runner, params):
  ev = _evaluator(ZeroShotEvaluator, cfg, itm_k=64)  # every class: the dense reference below
  got = ev(runner, params)
  scores, _ = ev.scores(runner, params)
  per_class = len(ev.templates)
  memory = runner.fusion_memory(params, ev.images.images)
  rows, prompts = np.divmod(np.arange(16 * len(ev.prompt_tokens)), len(ev.prompt_tokens))
  logits = runner.pair_itm_logits(params, memory, ev.prompt_tokens, rows, prompts)[:, 1]
  dense = logits.reshape(16, -1, per_class).mean(axis=2) + scores
  assert {k[4:]: v for k, v in got.items() if k.startswith("itm_")} == pytest.approx(
      shapes_accuracy(dense, ev.labels, 8))
  assert set(got) == {"top1", "color_acc", "shape_acc", "itm_top1", "itm_color_acc", "itm_shape_acc"}


@pytest.mark.slow
@pytest.mark.cross_path
def test_a_trained_blip_logs_reranked_metrics(tmp_path):
  """Through the trainer: the config's itm_k passes the start-up checks, both evaluators log their
  re-ranked metrics beside the contrastive ones, and a re-evaluation of the saved weights gives them."""
  import vljax
  from vljax.train.trainer import train_and_evaluate

  evals_cfg = dict(retrieval=dict(every=0, num_examples=32, itm_k=4), zeroshot=dict(every=0, num_examples=32, itm_k=3))
  cfg = _blip_config(total_steps=4, checkpoint=dict(every=100, keep=1, async_save=False))
  cfg.evals = evals_cfg
  train_and_evaluate(cfg, str(tmp_path))
  logged = {k: v for line in (tmp_path / "metrics.jsonl").read_text().splitlines() for k, v in json.loads(line).items()}
  predictor = vljax.load(str(tmp_path))
  for name, cls in (("retrieval", RetrievalEvaluator), ("zeroshot", ZeroShotEvaluator)):
    again = _evaluator(cls, cfg, **evals_cfg[name])(predictor.runner, predictor.params)
    assert any(k.startswith("itm_") for k in again)
    assert {f"eval/{name}/{k}": v for k, v in again.items()} == pytest.approx(
        {k: v for k, v in logged.items() if k.startswith(f"eval/{name}/")})


# ---- start-up checks

def test_itm_k_on_a_model_without_an_itm_head_fails_at_start():
  clip = tiny_config(evals=dict(retrieval=dict(every=3, itm_k=8)))
  with pytest.raises(ValueError, match=r"evals.retrieval.itm_k=8 needs a model with an image-text matching \(ITM\) "
                                       r"head; model 'composable' has contrastive embeddings.*Valid: "
                                       r"evals.retrieval.itm_k=0 \(off\), or a model with it \(composable, qformer\)"):
    setup.build(clip)
  settings = dict(zeroshot=dict(every=3, itm_k=2))
  with pytest.raises(ValueError, match=r"evals.zeroshot.itm_k=2 needs a model with an image-text matching"):
    requirements.check_evaluators({"zeroshot": evals.get_evaluator("zeroshot")}, settings,
                                  models.get_model(setup.build(tiny_config(evals={})).model_cfg), "composable",
                                  models.MODELS)
  setup.build(_blip_config(evals=dict(retrieval=dict(every=3, itm_k=8), zeroshot=dict(every=3, itm_k=0))))


@pytest.mark.parametrize("value", [-1, 2.5, "8", True])
def test_itm_k_must_be_a_nonnegative_int(value):
  cfg = _blip_config(evals=dict(retrieval=dict(every=3, itm_k=value)))
  with pytest.raises(ValueError, match=rf"evals.retrieval.itm_k={value!r} is invalid; valid: an int >= 0"):
    setup.build(cfg)
