"""Float32 rounding bounds for tests that compare two code paths computing the same numbers.

Two float32 sums of the same n terms, added in different orders (another device split, another
collective, another instruction set's vector width), each differ from the exact sum by at most
gamma_{n-1} * sum|x_i|, with gamma_k = k u / (1 - k u) and u = 2^-24 (Higham, "Accuracy and
Stability of Numerical Algorithms", 2nd ed., eq. 4.4; it holds for every order, pairwise or tree
included). So they differ from each other by at most 2 gamma_{n-1} sum|x_i|. The bound needs no
measurement and cannot move with the CPU; what a test must supply is sum|x_i|, the terms as the
reduction sees them.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from vljax import objectives

UNIT_ROUNDOFF = 2.0 ** -24  # float32, round to nearest


def gamma(n: int) -> float:
  return n * UNIT_ROUNDOFF / (1 - n * UNIT_ROUNDOFF)


def reordered_sum_bound(abs_sum, n: int):
  """Largest difference between two float32 sums, in any orders, of n terms whose |values| add to abs_sum."""
  return 2 * gamma(n - 1) * np.asarray(abs_sum, np.float64)


def contrastive_loss_bound(loss: float, batch_size: int) -> float:
  """How far reordering the batch's sums can move a softmax contrastive loss of value `loss`.

  The loss is the mean of 2B cross-entropies, each >= 0 (so sum|terms| = 2B * loss before the
  division), and each cross-entropy holds a log-sum-exp over B positive exponentials: a relative
  change e of that sum moves its log by at most e, in absolute terms, and so the mean as well.
  """
  return float(reordered_sum_bound(loss, 2 * batch_size) + reordered_sum_bound(1.0, batch_size))


def per_example_gradient_abs_sum(model, params, batch: dict, objective_spec) -> dict[str, np.ndarray]:
  """gradient_terms_abs_sum of the model's one forward pass and the objectives' combined loss."""
  def forward(p, batch):
    return model.apply({"params": p}, image=batch["image"], text=batch["text"], train=False)

  return gradient_terms_abs_sum(forward, lambda out, batch: objectives.combined_loss(objective_spec, out, batch)[0],
                                params, batch)


def gradient_terms_abs_sum(forward, loss, params, batch: dict) -> dict[str, np.ndarray]:
  """sum_i |dL/dparams through example i| (plus the term through outputs shared by the batch, such as
  the logit scale), per flattened param path: the sum|x_i| of the batch's gradient reduction.

  forward(params, batch) gives outputs whose leaves either lead with the batch size (example i's
  rows depend on example i alone, however many passes of the model made them) or are shared by the
  batch; L = loss(outputs, batch). Chain rule: dL/dparams = sum_i J_i^T c_i, with c_i = dL/d(outputs of
  example i) from the full batch's loss and J_i the Jacobian of example i's outputs; each J_i^T c_i
  is one vjp on one example.
  """
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  size = batch["text"].shape[0]
  examples = {k: v for k, v in batch.items() if v.ndim > 0 and v.shape[0] == size}

  def through_example(params, example, cot, own):
    one = {**batch, **jax.tree.map(lambda v: v[None], example)}
    _, vjp = jax.vjp(lambda p: forward(p, one), params)
    cot = jax.tree.map(lambda c, is_own: c[None] if is_own else jnp.zeros_like(c), cot, own)
    return jax.tree.map(jnp.abs, vjp(cot)[0])

  @jax.jit  # one program: run eagerly, every op of the model would be compiled on its own
  def terms(params, batch):
    outputs, vjp_all = jax.vjp(lambda p: forward(p, batch), params)
    cotangents = jax.grad(lambda out: loss(out, batch))(outputs)
    own = jax.tree.map(lambda x: x.ndim > 0 and x.shape[0] == size, outputs)
    shared_cot = jax.tree.map(lambda c, is_own: jnp.zeros_like(c) if is_own else c, cotangents, own)
    example_cots = jax.tree.map(lambda c, is_own: c if is_own else jnp.zeros((size, *c.shape)), cotangents, own)
    per_example = jax.lax.map(lambda xs: through_example(params, *xs, own), (examples, example_cots), batch_size=32)
    return jax.tree.map(lambda shared, each: jnp.abs(shared) + each.sum(0), vjp_all(shared_cot)[0], per_example)

  total = terms(params, batch)
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(total, sep="/").items()}


def first_step_gradient_terms(cfg, first: dict) -> dict[str, np.ndarray]:
  """per_example_gradient_abs_sum of the params and batch in a tests/first_step.py result."""
  from vljax.train import setup

  group = lambda name: {k[len(name) + 1:]: v for k, v in first.items() if k.startswith(name + "/")}  # noqa: E731
  params = traverse_util.unflatten_dict(group("param"), sep="/")
  return per_example_gradient_abs_sum(setup.build(cfg).model, params, group("batch"), cfg.objectives)


def assert_first_steps_within_reordering(got: dict, want: dict, terms: dict[str, np.ndarray],
                                         positions: int = 1) -> None:
  """Two tests/first_step.py results of one softmax contrastive run on the same examples: the loss
  within contrastive_loss_bound, each gradient tensor within 2 gamma_{n-1} times its largest
  per-example term sum (`terms`), n = batch x `positions`.

  positions=1 where both sides run the same per-device program on the same per-device batch shape,
  so only the order of the examples differs (processes vs devices). Where the per-device batch
  differs (one device vs eight), each device's program may also add an example's own positions (its
  tokens, its patches) in another order: `positions` counts them as terms of the same sum.
  Per tensor, not per element: a reordering upstream (a log-sum-exp, the reduce-scatter of a
  cotangent) moves each example's cotangent by a relative ~u, and the backward can carry that onto
  an element whose own terms cancel; the tensor's largest term sum bounds it to first order.
  """
  size = len(want["batch/text"])
  np.testing.assert_allclose(got["loss"], want["loss"], rtol=0,
                             atol=contrastive_loss_bound(float(want["loss"]), size))
  grads = lambda result: {k[len("grad/"):]: v for k, v in result.items() if k.startswith("grad/")}  # noqa: E731
  assert_gradients_within_reordering(grads(got), grads(want), terms, size * positions)


def assert_gradients_within_reordering(got: dict, want: dict, terms: dict[str, np.ndarray], n: int) -> None:
  """Two gradients {flattened param path: array} of one loss on the same examples, summed in other
  orders: each tensor within 2 gamma_{n-1} times its largest term sum (`terms`, from
  gradient_terms_abs_sum), n the number of terms each element's sum may be reordered over."""
  assert sorted(terms) == sorted(want) == sorted(got)
  for name, abs_sum in terms.items():
    assert np.abs(want[name]).max() > 0, name  # every tensor gets a gradient: a bound on zeros proves nothing
    bound = float(reordered_sum_bound(abs_sum.max(), n))
    np.testing.assert_allclose(got[name], want[name], rtol=0, atol=bound, err_msg=name)


class ErrorRecorder:
  """Wraps np.testing.assert_allclose / assert_array_equal for one test: every comparison still
  asserts, and the largest |actual - desired| and share of the tolerance it used are kept."""

  def __init__(self, test_id: str):
    self.test_id = test_id
    self.max_share = 0.0  # max |a - d| / (atol + rtol |d|) over comparisons: 1.0 is the tolerance itself
    self.max_abs = 0.0    # max |a - d| of that comparison
    self.tolerances: set[str] = set()

  def _observe(self, actual, desired, rtol: float, atol: float) -> None:
    try:
      self._observe_arrays(actual, desired, rtol, atol)
    except (TypeError, ValueError):  # shapes that do not broadcast: the assert itself says so
      pass

  def _observe_arrays(self, actual, desired, rtol: float, atol: float) -> None:
    a = np.asarray(actual, np.float64) if np.asarray(actual).dtype.kind in "fiub" else None
    d = np.asarray(desired, np.float64) if np.asarray(desired).dtype.kind in "fiub" else None
    if a is None or d is None:
      return
    diff = np.where(np.isnan(a) & np.isnan(d), 0.0, np.abs(a - d))  # NaN == NaN, as numpy's asserts
    if diff.size == 0:
      return
    allowed = atol + rtol * np.abs(d)
    with np.errstate(divide="ignore", invalid="ignore"):
      share = float(np.max(np.where(diff == 0, 0.0, diff / allowed)))  # a difference where none is allowed: inf
    if share > self.max_share:
      self.max_share, self.max_abs = share, float(np.nanmax(diff))
    self.tolerances.add("exact" if rtol == 0 and atol == 0 else
                        ", ".join(f"{k}={v:g}" for k, v in (("rtol", rtol), ("atol", atol)) if v))

  def install(self, monkeypatch) -> None:
    allclose, array_equal = np.testing.assert_allclose, np.testing.assert_array_equal

    def recorded_allclose(actual, desired, rtol=1e-7, atol=0, *args, **kwargs):
      self._observe(actual, desired, rtol, atol)
      return allclose(actual, desired, rtol, atol, *args, **kwargs)

    def recorded_array_equal(x, y, *args, **kwargs):
      self._observe(x, y, 0.0, 0.0)
      return array_equal(x, y, *args, **kwargs)

    monkeypatch.setattr(np.testing, "assert_allclose", recorded_allclose)
    monkeypatch.setattr(np.testing, "assert_array_equal", recorded_array_equal)

  def append_to(self, path: str) -> None:
    row = dict(test=self.test_id, isa=os.environ.get("XLA_FLAGS", ""), max_abs=self.max_abs,
               max_share=self.max_share, tolerances=sorted(self.tolerances))
    with open(path, "a") as f:  # one short line per test: appends from xdist workers stay whole
      f.write(json.dumps(row) + "\n")
