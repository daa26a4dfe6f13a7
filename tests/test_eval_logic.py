"""The caption and binding evaluators' own logic, on fake runners that read the image they are
given: a scorer that prefers the true caption scores 1.0, one that prefers the swap 0.0."""

import numpy as np
import pytest

from vljax.data import shapes, tokenizers
from vljax.evals.arrays import eval_images
from vljax.evals.binding import BindingEvaluator
from vljax.evals.captioning import CaptionEvaluator, attribute_correct

N = 12
MAX_LEN = 24


@pytest.fixture(scope="module")
def world():
  return shapes.ShapesWorld(seed=0, image_size=32)


@pytest.fixture(scope="module")
def tok():
  return tokenizers.get_tokenizer("shapes")


def index_of(examples) -> dict[bytes, int]:
  """Preprocessed image bytes -> example index: how a fake runner knows which image it was given."""
  return {image.tobytes(): i for i, image in enumerate(eval_images(examples))}


def true_caption(objects) -> str:
  return " and ".join(f"a {o['color']} {o['shape']}" for o in objects)


def swapped_caption(objects) -> str:
  """The same shapes, every one in a color that is not in the image."""
  absent = [c for c in shapes.COLOR_NAMES if c not in {o["color"] for o in objects}]
  return " and ".join(f"a {absent[i % len(absent)]} {o['shape']}" for i, o in enumerate(objects))


class CaptionRunner:
  """runner.caption / runner.generate answering `write(objects)` for the (query) image's scene;
  generate checks the prompt: k support chunks, then the query's "<image> caption:"."""

  def __init__(self, examples, write, tok):
    self.index, self.objects, self.write, self.tok = index_of(examples), [e["objects"] for e in examples], write, tok
    self.shots_seen = []

  def _texts(self, images):
    return [self.write(self.objects[self.index[image.tobytes()]]) for image in images]

  def caption(self, params, images, options, rng=None):
    return self._texts(images), None

  def generate(self, params, images, ids, lengths, options, rng=None):
    k = images.shape[1] - 1
    self.shots_seen.append(k)
    for text in self.tok.decode(ids):  # k captioned support images, then the query's
      assert text.count("<image>") == k + 1 and text.count("<eoc>") == k and text.endswith("<image> caption")
    return self._texts(images[:, -1])


@pytest.mark.parametrize("shots", [None, (0, 2)], ids=["captioner", "few-shot"])
def test_caption_evaluator_rewards_the_true_caption_not_the_swap(world, tok, shots):
  settings = dict(num_examples=N, num_support=8, prompt_max_len=64) | ({} if shots is None else dict(shots=shots))
  ev = CaptionEvaluator(settings, tokenizer=tok, max_len=MAX_LEN, data=dict(world_seed=world.seed, image_size=world.image_size))
  examples = [world.caption_example(i) for i in range(N)]
  true_runner = CaptionRunner(examples, true_caption, tok)
  good = ev(true_runner, None)
  bad = ev(CaptionRunner(examples, swapped_caption, tok), None)
  assert good["attribute_acc"] == 1.0 and bad["attribute_acc"] == 0.0
  for key in ("cider", "bleu1", "rouge_l"):
    assert good[key] > bad[key] + 0.05, key
  if shots:
    assert true_runner.shots_seen == [0, 2]
    assert good["cider_0shot"] == good["cider_2shot"] == good["cider"]  # the same captions each time
    assert bad["cider_2shot"] < good["cider_2shot"]


def test_attribute_correct_needs_a_named_pair_and_only_pairs_in_the_image():
  objects = [dict(color="red", shape="circle"), dict(color="blue", shape="star")]
  assert attribute_correct("a small red circle left of a blue star", objects)
  assert not attribute_correct("a red circle and a blue circle", objects)  # one pair is not there
  assert not attribute_correct("two objects", objects)  # names no pair


class BindingRunner:
  """runner.pair_scores: `prefer(text, truth)` for each caption, truth being the image's own."""

  def __init__(self, examples, prefer, tok):
    self.index, self.prefer, self.tok = index_of(examples), prefer, tok
    self.truth = tok.decode(tok.encode([e["caption"] for e in examples], MAX_LEN))

  def pair_scores(self, params, images, tokens, scoring):
    truth = [self.truth[self.index[image.tobytes()]] for image in images]
    return {k: np.array([self.prefer(text, t) for text, t in zip(self.tok.decode(ids), truth)], np.float32)
            for k, ids in tokens.items()}


def test_binding_evaluator_rewards_the_true_caption_not_the_swaps(world, tok):
  ev = BindingEvaluator(dict(num_examples=N), tokenizer=tok, max_len=MAX_LEN, data=dict(world_seed=world.seed, image_size=world.image_size))
  examples = [world.binding_example(i) for i in range(N)]
  assert ev(BindingRunner(examples, lambda text, truth: float(text == truth), tok), None) == {
      "acc": 1.0, "attribute_acc": 1.0, "relation_acc": 1.0}
  assert ev(BindingRunner(examples, lambda text, truth: float(text != truth), tok), None) == {
      "acc": 0.0, "attribute_acc": 0.0, "relation_acc": 0.0}
  # Preferring only the relation swap: attributes are bound, relations are not.
  relation = {t: r for t, r in zip(tok.decode(tok.encode([e["caption"] for e in examples], MAX_LEN)),
                                   tok.decode(tok.encode([e["relation_swapped"] for e in examples], MAX_LEN)))}
  out = ev(BindingRunner(examples, lambda text, truth: {truth: 1.0, relation[truth]: 2.0}.get(text, 0.0), tok), None)
  assert out == {"acc": 0.5, "attribute_acc": 1.0, "relation_acc": 0.0}
