"""The ranking rule of every evaluator: a tie ranks the right candidate below the others and a NaN
right score is a miss, so a collapsed model (constant or NaN scores) is never above chance."""

import numpy as np
import pytest

from vljax.data import shapes, tokenizers
from vljax.evals import ranking
from vljax.evals.binding import BindingEvaluator
from vljax.evals.retrieval import RetrievalEvaluator, recall_at_k, retrieval_ranks
from vljax.evals.zeroshot import ZeroShotEvaluator, topk_accuracy

N = 12  # candidates: chance R@K is K / N


class EmbeddingRunner:
  """Stands in for ModelRunner: every image and text embeds to `image_emb` / `text_emb`."""

  chunk = 8

  def __init__(self, image_emb, text_emb):
    self.image_emb, self.text_emb = np.asarray(image_emb, np.float32), np.asarray(text_emb, np.float32)

  def resolve_scoring(self, scoring):
    return "embedding"

  def images(self, params, images):
    return np.tile(self.image_emb, (len(images), 1))

  def texts(self, params, tokens):
    return np.tile(self.text_emb, (len(tokens), 1))

  def pair_scores(self, params, images, tokens, scoring):  # ModelRunner's embedding branch
    zimg = self.images(params, images)
    return {k: np.sum(zimg * self.texts(params, t), axis=1) for k, t in tokens.items()}


@pytest.fixture(scope="module")
def world():
  return shapes.ShapesWorld(seed=0, image_size=32)


def build(cls, world, **settings):
  return cls(settings, tokenizer=tokenizers.get_tokenizer("shapes"), max_len=24,
             data=dict(world_seed=world.seed, image_size=world.image_size))


def test_constant_scores_rank_last_and_give_no_more_than_chance():
  for scores in (np.zeros((N, N)), np.full((N, N), 0.3, np.float32)):
    i2t, t2i = retrieval_ranks(scores, np.arange(N))
    np.testing.assert_array_equal(i2t, N - 1)
    np.testing.assert_array_equal(t2i, N - 1)
    for ranks in (i2t, t2i):
      for k, r in recall_at_k(ranks, ks=(1, 5, 10, N)).items():
        assert r <= min(1.0, k / N)  # at most the chance of guessing
        assert r == (1.0 if k >= N else 0.0)


def test_nan_scores_are_misses_and_nan_rivals_lose():
  i2t, t2i = retrieval_ranks(np.full((N, N), np.nan), np.arange(N))
  assert recall_at_k(i2t, ks=(1, 5, 10)) == {1: 0.0, 5: 0.0, 10: 0.0}
  assert recall_at_k(t2i, ks=(1, 5, 10)) == {1: 0.0, 5: 0.0, 10: 0.0}
  # Image 2's embedding is NaN: its row and its caption miss; everyone else still ranks first,
  # the NaN rival counting as -inf.
  scores = np.eye(4) + 0.1
  scores[2] = np.nan
  i2t, t2i = retrieval_ranks(scores, np.arange(4))
  np.testing.assert_array_equal(i2t, [0, 0, 3, 0])
  np.testing.assert_array_equal(t2i, [0, 0, 3, 0])


def test_multi_caption_retrieval_ties_with_rivals_lose_ties_among_own_captions_do_not():
  text_image = np.array([0, 0, 1, 1])
  # Image 0's two captions tie with each other (no rival): a hit. Image 1's best caption ties
  # with image 0's caption 1: a miss; so does caption 3, which image 0 scores as high as image 1.
  scores = np.array([[0.9, 0.9, 0.1, 0.5],
                     [0.1, 0.5, 0.3, 0.5]])
  i2t, t2i = retrieval_ranks(scores, text_image)
  np.testing.assert_array_equal(i2t, [0, 1])
  np.testing.assert_array_equal(t2i, [0, 0, 0, 1])
  # One caption NaN, the other fine: the image is still retrieved by its good caption.
  scores = np.array([[np.nan, 0.9, 0.1, 0.2],
                     [0.1, 0.2, 0.3, 0.5]])
  i2t, t2i = retrieval_ranks(scores, text_image)
  np.testing.assert_array_equal(i2t, [0, 0])
  np.testing.assert_array_equal(t2i, [1, 0, 0, 0])


def test_topk_ties_and_nan_do_not_depend_on_class_order():
  # Every label is class 0, the one a stable sort or argmax would put first on a tie.
  labels = np.zeros(N, int)
  for scores in (np.zeros((N, 10)), np.full((N, 10), np.nan)):
    assert topk_accuracy(scores, labels) == {1: 0.0, 5: 0.0}
  scores = np.array([[1.0, 1.0, 0.0], [2.0, 1.0, np.nan], [np.nan, 1.0, 0.0]])
  np.testing.assert_array_equal(ranking.label_ranks(scores, np.array([1, 0, 0])), [1, 0, 2])
  assert topk_accuracy(scores, np.array([1, 0, 0]), ks=(1, 2, 3)) == {1: 1 / 3, 2: 2 / 3, 3: 1.0}


def test_rank_errors_name_the_bad_value():
  with pytest.raises(ValueError, match=r"row 1 has no right candidate"):
    ranking.ranks(np.zeros((2, 3)), np.array([[True, False, False], [False, False, False]]))
  with pytest.raises(ValueError, match=r"labels must be \[N=2\] ints in \[0, 3\).*range \[0, 3\]"):
    ranking.label_ranks(np.zeros((2, 3)), np.array([0, 3]))


@pytest.mark.parametrize("emb", [[1.0, 0.0], [np.nan, np.nan]], ids=["constant", "nan"])
def test_collapsed_model_scores_zero_on_retrieval_zeroshot_and_binding(world, emb):
  """Every image and text embedding the same vector (or NaN): nothing is retrieved, classified or
  bound, where the old strictly-greater / argmax rules gave R@1 = 1.0 and shapes top1 at chance."""
  runner = EmbeddingRunner(emb, emb)
  retrieval = build(RetrievalEvaluator, world, num_examples=N)(runner, None)
  # Every right item ranked last of N: reciprocal rank and AP 1 / N, the lowest they go.
  worst = {f"{d}_{m}": 1 / N for d in ("i2t", "t2i") for m in ("mrr", "map")}
  assert retrieval == pytest.approx({**{f"{d}_r{k}": 0.0 for d in ("i2t", "t2i") for k in (1, 5, 10)}, **worst})
  zeroshot = build(ZeroShotEvaluator, world, num_examples=2 * len(shapes.COLORS) * len(shapes.SHAPES))(runner, None)
  assert zeroshot == {"top1": 0.0, "color_acc": 0.0, "shape_acc": 0.0}
  binding = build(BindingEvaluator, world, num_examples=N)(runner, None)
  assert binding == {"acc": 0.0, "attribute_acc": 0.0, "relation_acc": 0.0}


def test_shapes_color_and_shape_accuracy_follow_the_best_class(world):
  """Image i scores 1 on the classes `tops(label_i)` and 0 elsewhere. One top of the right color
  (only): color_acc 1, shape_acc 0, top1 0. Tied with one of another color: color_acc 0 too."""
  ev = build(ZeroShotEvaluator, world, num_examples=len(shapes.COLORS) * len(shapes.SHAPES))
  nc, ns = len(shapes.COLORS), len(shapes.SHAPES)
  c = np.arange(nc * ns)
  next_shape = c // ns * ns + (c % ns + 1) % ns
  next_both = (c // ns + 1) % nc * ns + (c % ns + 1) % ns

  class Scores(EmbeddingRunner):
    def __init__(self, *tops):
      self.tops = tops

    def images(self, params, images):
      return np.eye(len(c), dtype=np.float32)[ev.labels]  # image i -> one-hot of its label

    def texts(self, params, tokens):
      # Class k's embedding is 1 at every label l with k in tops(l): image . class = [k in tops(l)].
      emb = sum(np.eye(len(c), dtype=np.float32)[np.argsort(top)] for top in self.tops)
      return np.repeat(emb, len(ev.templates), 0)

  assert ev(Scores(next_shape), None) == {"top1": 0.0, "color_acc": 1.0, "shape_acc": 0.0}
  assert ev(Scores(next_shape, next_both), None) == {"top1": 0.0, "color_acc": 0.0, "shape_acc": 0.0}


class PairRunner:
  """Stands in for ModelRunner.pair_scores: fixed scores per caption set."""

  def __init__(self, **scores):
    self.scores = scores

  def pair_scores(self, params, images, tokens, scoring):
    return {k: np.broadcast_to(np.asarray(self.scores[k], np.float32), (len(t),)) for k, t in tokens.items()}


def test_binding_counts_ties_and_nan_captions_as_misses(world):
  ev = build(BindingEvaluator, world, num_examples=4)
  tie = PairRunner(caption=0.5, attribute_swapped=0.5, relation_swapped=0.5)
  assert ev(tie, None) == {"acc": 0.0, "attribute_acc": 0.0, "relation_acc": 0.0}
  nan_caption = PairRunner(caption=np.nan, attribute_swapped=0.1, relation_swapped=np.nan)
  assert ev(nan_caption, None)["acc"] == 0.0
  # A NaN twin is -inf: the finite true caption beats it.
  nan_twin = PairRunner(caption=0.5, attribute_swapped=np.nan, relation_swapped=[0.1, 0.5, 0.6, 0.2])
  assert ev(nan_twin, None) == {"acc": 0.75, "attribute_acc": 1.0, "relation_acc": 0.5}
