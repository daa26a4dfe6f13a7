"""Few-shot linear probes on frozen image features: big_vision's fewshot_lsr protocol, the one every
pretraining objective is judged by (CapPa, SigLIP).

For each task, k examples per class are drawn from a pool, the features are whitened with the shots'
mean and std, a constant column BIAS_CONSTANT is appended (a bias almost free of the penalty), and
a ridge regression onto one-vs-all targets in {-1, +1} is solved in closed form; a test image's
class is the argmax of its C outputs. Every (task, k) is repeated over `num_draws` draws of the
shots; the mean and the std over draws are reported. The shots of k are the first k of a draw's
per-class permutation, so a draw's 5 shots are among its 10 (as big_vision's seeds).

Features: the image tower's pooled output before any head (ModelRunner.image_features), so every
model with an image tower gets a probe, captioners included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vljax.data import shapes
from vljax.evals import datasets, world as world_lib
from vljax.evals.arrays import eval_images
from vljax.evals.registry import register_evaluator
from vljax.evals.setting_checks import positive_int
from vljax.evals.shots import parse_shots
from vljax.inference.runner import ModelRunner
from vljax.models.capabilities import IMAGE_FEATURES

BIAS_CONSTANT = 100.0  # big_vision's: large, so the bias is nearly unregularised
DEFAULT_L2 = 2.0 ** 10  # big_vision's fixed l2_reg for its fewshot evaluations
DEFAULT_SHOTS = (1, 5, 10, 25)
STD_EPS = 1e-5  # added to the shots' per-feature std: constant features do not divide by zero


# ---------------------------------------------------------------------------- the probe

def whiten(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
  """float64 features standardised with the train rows' mean and std, each with the bias column."""
  train = np.asarray(train, np.float64)
  mean, std = train.mean(axis=0), train.std(axis=0) + STD_EPS
  pad = lambda x: np.pad((np.asarray(x, np.float64) - mean) / std, ((0, 0), (0, 1)),  # noqa: E731
                         constant_values=BIAS_CONSTANT)
  return [pad(train)] + [pad(x) for x in others]


def one_vs_all(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """[N, C] targets: +1 for the label, -1 elsewhere."""
  return 2.0 * (np.asarray(labels)[:, None] == np.arange(num_classes)[None, :]) - 1.0


def ridge_weights(x: np.ndarray, y: np.ndarray, l2s: Sequence[float]) -> np.ndarray:
  """[len(l2s), D, C]: argmin_w |x w - y|^2 + l2 |w|^2 for each l2, from one eigendecomposition.

  (x^T x + l2 I)^-1 x^T y when N >= D, else the same as x^T (x x^T + l2 I)^-1 y; either Gram matrix
  is q diag(eigs) q^T, so each l2 costs a rescaling (big_vision's _precompute_cache).
  """
  if x.shape[0] >= x.shape[1]:
    eigs, q = np.linalg.eigh(x.T @ x)
    lhs, rhs = q, q.T @ (x.T @ y)
  else:
    eigs, q = np.linalg.eigh(x @ x.T)
    lhs, rhs = x.T @ q, q.T @ y
  return np.stack([(lhs / (eigs + l2)[None, :]) @ rhs for l2 in l2s])


def probe_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                   num_classes: int, l2: float) -> float:
  """Test accuracy of the regularised least-squares probe fitted on (x_train, y_train)."""
  xtr, xte = whiten(x_train, x_test)
  w = ridge_weights(xtr, one_vs_all(y_train, num_classes), [l2])[0]
  return float(np.mean(np.argmax(xte @ w, axis=1) == np.asarray(y_test)))


def _choose_l2(xtr, ytr, xval, yval, num_classes: int, l2s: Sequence[float]) -> float:
  """The strength of l2s with the best accuracy on held-out pool examples (ties: the first)."""
  if len(l2s) == 1:
    return l2s[0]
  xtr, xval = whiten(xtr, xval)
  ws = ridge_weights(xtr, one_vs_all(ytr, num_classes), l2s)
  accs = [np.mean(np.argmax(xval @ w, axis=1) == yval) for w in ws]
  return l2s[int(np.argmax(accs))]


def fewshot_accuracies(pool: np.ndarray, pool_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray,
                       num_classes: int, shots: Sequence[int], num_draws: int, l2s: Sequence[float],
                       seed: int = 0, num_val: int = 0) -> dict[int, np.ndarray]:
  """k -> test accuracy of each draw [num_draws]. Draw d permutes each class's pool examples with
  rng (seed, d); the shots of k are the first k, the next num_val (when several l2s) pick l2."""
  out = {k: np.zeros(num_draws) for k in shots}
  for d in range(num_draws):
    rng = np.random.default_rng([seed, d])
    order = [rng.permutation(np.flatnonzero(pool_labels == c)) for c in range(num_classes)]
    val = np.concatenate([o[max(shots):max(shots) + num_val] for o in order]) if len(l2s) > 1 else None
    for k in shots:
      idx = np.concatenate([o[:k] for o in order])
      l2 = l2s[0] if val is None else _choose_l2(pool[idx], pool_labels[idx], pool[val], pool_labels[val],
                                                  num_classes, l2s)
      out[k][d] = probe_accuracy(pool[idx], pool_labels[idx], test, test_labels, num_classes, l2)
  return out


def check_pool(labels: np.ndarray, num_classes: int, need: int, where: str) -> None:
  """Every class has `need` pool examples; else an error naming the class and the setting to change."""
  counts = np.bincount(np.asarray(labels, np.int64), minlength=num_classes)
  short = np.flatnonzero(counts < need)
  if len(short):
    c = int(short[0])
    raise ValueError(f"{where}: class {c} has {counts[c]} pool example(s), fewer than the {need} the largest "
                     f"shot count (+ validation examples) needs; valid: raise num_pool, or fewer shots")


# ---------------------------------------------------------------------------- shapes tasks

_FEWSHOT_STREAM = 7  # past the streams vljax.data.shapes uses (0-6): images no other eval renders
_POOL, _TEST = 0, 1
POSITION_NAMES = tuple(p for row in shapes.POSITIONS for p in row)


def single_object_scene(world: shapes.ShapesWorld, part: int, index: int) -> tuple[np.ndarray, dict]:
  """One object; color and shape cycle with the index (balanced over any 64 in a row), the cell and
  size are random. Labels: color index, shape index, cell row * 3 + col."""
  rng = np.random.default_rng([world.seed, _FEWSHOT_STREAM, part, 0, index])
  cell = int(rng.integers(9))
  obj = dict(shape=shapes.SHAPES[(index // len(shapes.COLORS)) % len(shapes.SHAPES)],
             color=shapes.COLOR_NAMES[index % len(shapes.COLORS)], size=shapes.SIZES[rng.integers(2)],
             row=cell // 3, col=cell % 3)
  labels = dict(color=index % len(shapes.COLORS), shape=(index // len(shapes.COLORS)) % len(shapes.SHAPES),
                position=cell)
  return world.render([obj], rng), labels


def counting_scene(world: shapes.ShapesWorld, part: int, index: int) -> tuple[np.ndarray, dict]:
  """min_objects..max_objects objects (the world's range), the count cycling with the index; cells
  distinct, shapes, colors and sizes random. Label: count - min_objects."""
  rng = np.random.default_rng([world.seed, _FEWSHOT_STREAM, part, 1, index])
  span = world.max_objects - world.min_objects + 1
  n = world.min_objects + index % span
  cells = rng.choice(9, n, replace=False)
  objects = [dict(shape=shapes.SHAPES[rng.integers(len(shapes.SHAPES))],
                  color=shapes.COLOR_NAMES[rng.integers(len(shapes.COLORS))],
                  size=shapes.SIZES[rng.integers(2)], row=int(k) // 3, col=int(k) % 3) for k in cells]
  return world.render(objects, rng), dict(count=index % span)


# task -> (scene function, number of classes given the world)
SHAPES_TASKS = {
    "color": (single_object_scene, lambda w: len(shapes.COLORS)),
    "shape": (single_object_scene, lambda w: len(shapes.SHAPES)),
    "position": (single_object_scene, lambda w: len(POSITION_NAMES)),
    "count": (counting_scene, lambda w: w.max_objects - w.min_objects + 1),
}


class _Group:
  """Pool and test images with one or more tasks' labels: the features are computed once for all."""

  def __init__(self, pool, test, tasks: dict[str, tuple[np.ndarray, np.ndarray, int]]):
    self.pool, self.test, self.tasks = pool, test, tasks


def _rendered(world, scene, part: int, n: int, normalization: str) -> tuple[datasets.ArrayImages, list[dict]]:
  made = [scene(world, part, i) for i in range(n)]
  images = eval_images([{"image": image} for image, _ in made], normalization)
  return datasets.ArrayImages(images), [labels for _, labels in made]


@register_evaluator("fewshot")
class FewShotEvaluator:
  """Linear-probe accuracy `<task>_<k>shot` (mean over draws) and `<task>_<k>shot_std` (sample std
  over draws) for each k in `shots`.

  Shapes world (no `dataset`), tasks: color, shape, position (cell of the 3x3 grid; "top left" is 0,
  row-major) of single-object scenes; count (number of objects, the world's min..max) of scenes of
  that many objects. A classification set on disk (`dataset`, as zeroshot's; vljax.evals.datasets):
  task "acc", test images from `dataset` (default split "validation"), shots from `shots_dataset`
  (default: `dataset` with split "train"; a JSONL set needs its own), and `skipped` when some
  images could not be decoded.

  Settings: every, shots (default 1, 5, 10, 25), num_draws (5), l2_reg (big_vision's fixed 1024, or a
  list: each draw picks the best on num_val (5) further pool examples per class), seed, tasks,
  num_examples (test images; shapes: 576), num_pool (images shots are drawn from; shapes: 1024),
  dataset, shots_dataset.
  """

  needs = IMAGE_FEATURES  # vljax.evals.requirements
  settings_keys = ("every", "shots", "num_draws", "l2_reg", "num_val", "seed", "tasks", "num_examples",
                   "num_pool", "dataset", "shots_dataset")

  def __init__(self, settings, *, tokenizer, max_len: int, data: Mapping[str, Any]):
    del tokenizer, max_len  # images only
    where = f"evals.{self.name}"
    datasets.check_keys(settings, self.settings_keys, where)
    self.shots = parse_shots(settings.get("shots", DEFAULT_SHOTS), f"{where}.shots")
    if 0 in self.shots:
      raise ValueError(f"{where}.shots={self.shots} holds 0; valid: shot counts >= 1 (a probe needs examples)")
    self.num_draws = positive_int(settings, "num_draws", 5, where)
    l2 = settings.get("l2_reg", DEFAULT_L2)
    self.l2s = tuple(float(v) for v in (l2 if isinstance(l2, (list, tuple)) else [l2]))
    if not self.l2s or any(not v > 0 for v in self.l2s):
      raise ValueError(f"{where}.l2_reg={l2!r} is invalid; valid: a float > 0 or a list of them")
    self.num_val = positive_int(settings, "num_val", 5, where) if len(self.l2s) > 1 else 0
    self.seed = int(settings.get("seed", 0))
    need = max(self.shots) + self.num_val
    spec = datasets.as_dict(settings.get("dataset", None))
    if spec:
      self.groups = [self._disk_group(spec, settings, data, need, where)]
    else:
      self.groups = self._shapes_groups(settings, data, need, where)

  def _shapes_groups(self, settings, data, need: int, where: str) -> list[_Group]:
    if settings.get("shots_dataset", None):
      raise ValueError(f"{where}.shots_dataset is set but dataset is not; valid: set both, or neither (shapes)")
    world = world_lib.shapes_world(data, type(self))
    available = [t for t, (_, classes) in SHAPES_TASKS.items() if classes(world) >= 2]
    tasks = settings.get("tasks", None)
    tasks = available if tasks is None else [tasks] if isinstance(tasks, str) else list(tasks)
    bad = [t for t in tasks if t not in available]
    if bad or not tasks:
      why = " (count needs a world with min_objects < max_objects)" if "count" in bad else ""
      raise ValueError(f"{where}.tasks={tasks!r}: {bad or 'none'} not available{why}; valid: {available}")
    n_test = positive_int(settings, "num_examples", 576, where)
    n_pool = positive_int(settings, "num_pool", 1024, where)
    normalization = data.get("normalization", "siglip")
    groups = []
    for scene in dict.fromkeys(SHAPES_TASKS[t][0] for t in tasks):  # one image set per scene kind
      pool, pool_labels = _rendered(world, scene, _POOL, n_pool, normalization)
      test, test_labels = _rendered(world, scene, _TEST, n_test, normalization)
      labelled = {}
      for t in (t for t in tasks if SHAPES_TASKS[t][0] is scene):
        classes = SHAPES_TASKS[t][1](world)
        labelled[t] = (np.array([x[t] for x in pool_labels]), np.array([x[t] for x in test_labels]), classes)
        check_pool(labelled[t][0], classes, need, f"{where} task {t!r}")
      groups.append(_Group(pool, test, labelled))
    return groups

  def _disk_group(self, spec: dict, settings, data, need: int, where: str) -> _Group:
    if settings.get("tasks", None) is not None:
      raise ValueError(f"{where}.tasks is for the shapes world; a set on disk has the one task 'acc'")
    shots_spec = datasets.as_dict(settings.get("shots_dataset", None))
    if not shots_spec:
      if spec.get("source", "tfds") != "tfds":
        raise ValueError(f"{where}: a {spec.get('source')!r} dataset needs shots_dataset (the set shots are "
                         "drawn from, other images than the test set's)")
      shots_spec = dict(spec, split="train")
    kw = dict(image_size=world_lib.image_size(data), normalization=data.get("normalization", "siglip"))
    test = datasets.open_classification(spec, num_examples=positive_int(settings, "num_examples", None, where), **kw)
    pool = datasets.open_classification(shots_spec, num_examples=positive_int(settings, "num_pool", None, where),
                                        **kw)
    if len(pool.class_names) != len(test.class_names):
      raise ValueError(f"{where}: shots_dataset has {len(pool.class_names)} classes, dataset "
                       f"{len(test.class_names)}; valid: two splits of one labelling")
    classes = len(test.class_names)
    check_pool(pool.labels, classes, need, f"{where} shots_dataset")
    return _Group(pool.images, test.images, {"acc": (pool.labels, test.labels, classes)})

  def __call__(self, runner: ModelRunner, params) -> dict[str, float]:
    out = {}
    features = lambda x: runner.image_features(params, x)  # noqa: E731
    for group in self.groups:
      pool, pool_kept = group.pool.map(features, runner.chunk)
      test, test_kept = group.test.map(features, runner.chunk)
      for task, (pool_labels, test_labels, classes) in group.tasks.items():
        pool_labels = pool_labels[pool_kept]
        # Undecodable pool images can leave a class short: say so rather than probe on fewer shots.
        check_pool(pool_labels, classes, max(self.shots) + self.num_val, f"evals.{self.name} task {task!r}")
        accs = fewshot_accuracies(pool, pool_labels, test, test_labels[test_kept], classes, self.shots,
                                  self.num_draws, self.l2s, self.seed, self.num_val)
        for k, a in accs.items():
          out[f"{task}_{k}shot"] = float(np.mean(a))
          out[f"{task}_{k}shot_std"] = float(np.std(a, ddof=1)) if len(a) > 1 else 0.0
      skipped = (group.pool.skipped or 0) + (group.test.skipped or 0)
      if skipped:
        out["skipped"] = float(skipped)
    return out
