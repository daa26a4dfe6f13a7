"""Objective registry: config name -> objective, with what it declares about itself.

An objective is fn(outputs, batch, *, <run args it names>, **options) -> (loss, metrics). Options
come from the config; the run's own arguments (RUN_ARGS) from the train step, to the objectives
whose signature names them: the loss implementation, the tokenizer's pad id, `model`, a
ModelAccess that runs further passes of the model on the step's parameters and hands out named
random streams, and `state`, the objective's own arrays carried from step to step (a feature
queue). An objective that names `state` returns (loss, metrics, new state). What the objective
declares at registration (which model outputs it reads, whether it couples the examples of a
batch, how it normalises over the batch) is what the start-up checks and GradCache read: no name
tables elsewhere.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import zlib
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from vljax.data import tokenizers
from vljax.plugins import add_unique

Objective = Callable[..., tuple[jnp.ndarray, dict]]
# Counts the units a per-example objective averages over in a batch (tokens, examples); additive
# over examples, so GradCache can weigh micro-batches: count(batch, pad_id) -> scalar.
Count = Callable[[dict, int], jnp.ndarray]

# Keyword arguments the run supplies, never the config: the loss implementation ("gather" or
# "shard_map"), the tokenizer's pad id, and access to the model (ModelAccess).
RUN_ARGS = ("impl", "pad_id", "model", "state")
# Where combined_loss returns the stateful objectives' new state, {name: state}, among its metrics:
# the train step takes it out into TrainState.objective_state; it is never logged.
NEW_STATE = "objective_state"
# (model outputs as ShapeDtypeStructs, rows of the global micro-batch, the objective's options) -> its
# initial state (a pytree of arrays, saved in every checkpoint), or None when these options keep none.
StateInit = Callable[[dict, int, dict], Any]


@dataclasses.dataclass(frozen=True)
class ObjectiveInfo:
  """An objective and its declarations.

  reads: model outputs with one row per example that it reads (img_emb, caption_logits...).
  shared: model outputs that are functions of the parameters alone (logit_scale, logit_bias).
  couples_examples: True when each example's loss depends on the others' outputs (contrastive
    negatives); False when the loss is sum(per-unit terms) / count(batch) (captioning).
  count: for objectives that do not couple examples, the normaliser (see Count).
  impls: the loss implementations (config loss_impl) it has a form for.
  passes: the further passes it runs through ModelAccess.apply, as (model method, runs per example of
    the batch) pairs, e.g. ITM's ("itm_logits", 3); the train step's FLOP count adds them
    (vljax/train/step_flops.py). An objective that drives the model and declares none goes uncounted,
    unless `replaces_counted_pass`: its pass stands in for one the model's count already holds (LocCa's
    decoder over its own sequences instead of the unread caption pass, at the same length).
  state: for objectives that carry arrays from step to step, their initial value (StateInit).
  """
  name: str
  fn: Objective
  reads: tuple[str, ...]
  shared: tuple[str, ...] = ()
  couples_examples: bool = False
  count: Count | None = None
  impls: tuple[str, ...] = ("gather", "shard_map")  # the loss_impl values it has a form for
  passes: tuple[tuple[str, float], ...] = ()
  state: StateInit | None = None
  replaces_counted_pass: bool = False

  @property
  def needs(self) -> tuple[str, ...]:
    """Every model output it reads."""
    return self.reads + self.shared

  @property
  def drives_model(self) -> bool:
    """Whether it runs passes of the model of its own (its signature names `model`)."""
    return "model" in inspect.signature(self.fn).parameters

  @property
  def uncounted(self) -> bool:
    """Whether it runs model passes that no FLOP count includes."""
    return self.drives_model and not self.passes and not self.replaces_counted_pass


OBJECTIVES: dict[str, ObjectiveInfo] = {}


def register_objective(name: str, *, reads: tuple[str, ...], shared: tuple[str, ...] = (),
                       couples_examples: bool, count: Count | None = None,
                       impls: tuple[str, ...] = ("gather", "shard_map"),
                       passes: Mapping[str, float] | None = None, state: StateInit | None = None,
                       replaces_counted_pass: bool = False) -> Callable[[Objective], Objective]:
  """Decorator adding an objective to OBJECTIVES under `name`, with its declarations (ObjectiveInfo);
  passes: model method -> runs per example (ObjectiveInfo.passes); state: its initial state, for an
  objective whose signature names `state`."""
  if not couples_examples and count is None:
    raise ValueError(f"objective {name!r}: an objective that does not couple examples declares its count")
  runs = tuple((str(m), float(k)) for m, k in (passes or {}).items())
  if any(not k > 0 for _, k in runs):
    raise ValueError(f"objective {name!r}: passes={dict(passes)} must give each method runs per example > 0")

  def wrap(fn: Objective) -> Objective:
    if (state is None) == ("state" in inspect.signature(fn).parameters):
      raise ValueError(f"objective {name!r}: an objective takes `state` exactly when it registers its initial state")
    add_unique(OBJECTIVES, "objective", name,
               ObjectiveInfo(name, fn, tuple(reads), tuple(shared), couples_examples, count, tuple(impls), runs,
                             state, replaces_counted_pass),
               owner=lambda info: info.fn)
    return fn
  return wrap


def get_objective(name: str) -> ObjectiveInfo:
  """The objective registered as `name`."""
  if name not in OBJECTIVES:
    raise ValueError(f"unknown objective {name!r}; valid: {sorted(OBJECTIVES)}")
  return OBJECTIVES[name]


def parse_objectives(spec: Mapping[str, Any]) -> dict[str, tuple[float, dict[str, Any]]]:
  """The config's `objectives` -> {name: (weight, options)}.

  Each value is a weight, or a dict with "weight" and the objective's keyword options, e.g.
  {"captioning": {"weight": 2.0, "label_smoothing": 0.1}}. Unknown names or options fail here.
  """
  if not spec:
    raise ValueError(f"no objectives given; valid: {sorted(OBJECTIVES)}")
  parsed = {}
  for name, value in spec.items():
    fn = get_objective(name).fn
    if hasattr(value, "to_dict"):
      value = value.to_dict()
    options = dict(value) if isinstance(value, Mapping) else {"weight": value}
    if "weight" not in options:
      raise ValueError(f"objectives.{name}: a dict value needs a 'weight', got {options}")
    weight = float(options.pop("weight"))
    valid = [p.name for p in inspect.signature(fn).parameters.values()
             if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in RUN_ARGS]
    unknown = sorted(set(options) - set(valid))
    if unknown:
      raise ValueError(f"objectives.{name}: unknown option(s) {unknown}; valid: {valid}")
    parsed[name] = (weight, options)
  return parsed


class ModelAccess:
  """What an objective may do with the model inside the train step: run it again on the step's
  parameters (a pass on mined negatives, a second view), run the EMA of the weights (`momentum`) or
  the run's frozen teacher (`teacher`), and draw from named random streams.

  Streams are separate by name: "dropout" is the model's dropout, "mask" what a model masks its
  inputs with (CapPa's parallel prediction), and an objective's own names (e.g. "negatives") are
  streams of their own, so adding an objective never changes the randomness of another.
  """

  def __init__(self, module, params, rng: jax.Array, train: bool = True, momentum_params=None,
               teacher: tuple[Any, Any] | None = None, step: jax.Array | None = None,
               total_steps: int | None = None):
    self.module, self.params, self._rng, self.train = module, params, rng, train
    self.momentum_params = momentum_params  # the EMA of the weights (vljax/train/ema.py), when the run keeps one
    self.teacher_model = teacher  # (module, params) of the run's frozen teacher (vljax/train/teacher.py), if any
    # The number of the update this step computes (0-based, traced) and the run's total_steps: what an
    # objective that switches on late in training reads (switched_on). None outside the train step.
    self.step, self.total_steps = step, total_steps

  def switched_on(self, start_fraction: float, needed_by: str) -> jax.Array | bool:
    """Whether an objective on from start_fraction of training on is on at this step: step >=
    floor(start_fraction * total_steps + 0.5) (rounded half up), a traced bool (one compiled step serves both sides of the
    switch); True for start_fraction 0, and outside a train step (no step: a direct call or a bench
    sees the objective as after its switch)."""
    if isinstance(start_fraction, bool) or not isinstance(start_fraction, (int, float)) or not 0 <= start_fraction < 1:
      raise ValueError(f"{needed_by}.start_fraction={start_fraction!r} is invalid; valid: a fraction of total_steps in "
                       "[0, 1) after which the objective is on (SigLIP 2: 0.8, its last 20%; 0: from the start)")
    if start_fraction == 0 or self.step is None:
      return True
    if not self.total_steps:
      raise ValueError(f"{needed_by}.start_fraction={start_fraction} needs the run's total_steps; got "
                       f"{self.total_steps!r}")
    return self.step >= math.floor(start_fraction * self.total_steps + 0.5)

  def rng(self, stream: str) -> jax.Array:
    return stream_rng(self._rng, stream)

  def apply(self, *args, method: str | None = None, pass_name: str | None = None, **kwargs):
    """module.apply on the step's params, with keys for the streams the module declares: those of
    the step's own pass, or, given a pass_name, keys of their own (a pass on other inputs then
    draws other dropout masks)."""
    if method is None:
      kwargs.setdefault("train", self.train)
    rng = self._rng if pass_name is None else stream_rng(self._rng, f"pass:{pass_name}")
    return self.module.apply({"params": self.params}, *args, method=method, rngs=model_rngs(self.module, rng),
                             **kwargs)

  def momentum(self, *args, needed_by: str, **kwargs):
    """The momentum model's outputs (BLIP/ALBEF): module.apply on the EMA weights, deterministic
    (train=False), no gradient. `needed_by` names the setting that asked, for the error when the run
    keeps no EMA."""
    if self.momentum_params is None:
      raise ValueError(f"{needed_by} needs a momentum model, an EMA of the weights: set ema.decay "
                       "(BLIP: 0.995; vljax/train/ema.py)")
    return _frozen_apply(self.module, self.momentum_params, args, kwargs)

  def teacher(self, *args, needed_by: str, **kwargs):
    """The frozen teacher's outputs (distillation): its module.apply on its own params, deterministic
    (train=False), no gradient. `needed_by` names the setting that asked, for the error when the run
    has no teacher."""
    if self.teacher_model is None:
      raise ValueError(f"{needed_by} needs a teacher: set teacher.workdir to a trained or imported vljax "
                       "workdir (vljax/train/teacher.py)")
    return _frozen_apply(*self.teacher_model, args, kwargs)


def _frozen_apply(module, params, args: tuple, kwargs: dict):
  """module.apply on weights that do not train (the EMA, a teacher): deterministic, no gradient either way."""
  out = module.apply({"params": jax.lax.stop_gradient(params)}, *args, train=False, **kwargs)
  return jax.lax.stop_gradient(out)


def stream_rng(rng: jax.Array, stream: str) -> jax.Array:
  """The key of one named stream. "dropout" is the step's key itself (what the model always drew
  its dropout from); any other stream folds in a number computed from its name."""
  if stream == "dropout":
    return rng
  return jax.random.fold_in(rng, _stream_number(stream))


def _stream_number(stream: str) -> int:
  return zlib.crc32(stream.encode()) & 0x7FFFFFFF


def model_rngs(module, rng: jax.Array) -> dict[str, jax.Array]:
  """The rngs dict for module.apply: one key per stream the module declares (`rng_streams`)."""
  return {s: stream_rng(rng, s) for s in getattr(module, "rng_streams", ("dropout",))}


def call_objective(name: str, outputs: dict, batch: dict, options: Mapping[str, Any], **run: Any
                   ) -> tuple[jnp.ndarray, dict]:
  """Objective `name` with its config options and those of the run's arguments it takes."""
  info = get_objective(name)
  missing = [key for key in info.needs if key not in outputs]
  if missing:
    raise ValueError(f"objective {name!r} needs model output {missing[0]!r}; the model returned {sorted(outputs)}")
  fn = info.fn
  params = inspect.signature(fn).parameters
  if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
    run = {k: v for k, v in run.items() if k in params}
  if "model" in params and run.get("model") is None:
    raise ValueError(f"objective {name!r} runs the model itself: call it with model=ModelAccess(...)")
  return fn(outputs, batch, **run, **options)


def combined_loss(spec: Mapping[str, Any], outputs: dict, batch: dict, *, impl: str = "gather",
                  pad_id: int = tokenizers.PAD_ID, model: ModelAccess | None = None,
                  state: Mapping[str, Any] | None = None) -> tuple[jnp.ndarray, dict]:
  """Weighted sum of objectives; metrics hold each '<name>_loss' unweighted plus their extras.
  pad_id: the run's tokenizer's (the trainer passes it); model: for objectives that drive it;
  state: the stateful objectives' states by name (init_state), whose new values come back as
  metrics[NEW_STATE]; without it they run as if at their first step and return none."""
  total = jnp.zeros((), jnp.float32)
  metrics: dict = {}
  new_state = {}
  for name, (weight, options) in parse_objectives(spec).items():
    run = dict(impl=impl, pad_id=pad_id, model=model)
    if get_objective(name).state is not None:
      loss, extra, after = call_objective(name, outputs, batch, options, state=(state or {}).get(name), **run)
      if state is not None and name in state:
        new_state[name] = after
    else:
      loss, extra = call_objective(name, outputs, batch, options, **run)
    total = total + weight * loss
    metrics.update(extra)
    metrics[f"{name}_loss"] = loss
  metrics["loss"] = total
  if new_state:
    metrics[NEW_STATE] = new_state
  return total, metrics


def init_state(spec: Mapping[str, Any], outputs: dict, batch_rows: int) -> dict | None:
  """{name: initial state} of the stateful objectives in `spec` (None when none keeps any): outputs,
  the model's outputs as ShapeDtypeStructs; batch_rows, the rows of the global micro-batch."""
  states = {}
  for name, (_, options) in parse_objectives(spec).items():
    init = get_objective(name).state
    value = None if init is None else init(outputs, batch_rows, options)
    if value is not None:
      states[name] = value
  return states or None


def keeps_state(spec: Mapping[str, Any]) -> bool:
  """Whether some objective in `spec` registers a state (it may still keep none with its options)."""
  return any(get_objective(name).state is not None for name in parse_objectives(spec))
