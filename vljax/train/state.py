"""TrainState and its sharded initialisation from the model's logical axis names."""

from __future__ import annotations

from typing import Any

import flax
import jax
from flax import traverse_util
import jax.numpy as jnp
import optax
from flax import linen as nn

from vljax import objectives
from vljax.data import pipeline
from vljax.parallel.sharding import LOGICAL_RULES, replicated
from vljax.train import ema as ema_lib
from vljax.train.optim import split_frozen


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any            # every parameter, nested dict
  opt_state: Any         # optimizer state of the trainable params only
  rng: jax.Array         # uint32[2]; folded with the step for per-step randomness
  ema_params: Any = None  # EMA of the trainable params (vljax/train/ema.py); None when cfg.ema.decay is 0
  objective_state: Any = None  # {objective: its arrays carried across steps} (a feature queue); None when none keeps any


def dummy_inputs(cfg, batch: int) -> dict:
  """Model inputs shaped like the data format's batches (one image per chunk for "vlm"); a format
  without images gives none."""
  fields = pipeline.batch_ndims(cfg.data.format)
  inputs = dict(text=jnp.zeros((batch, cfg.data.max_len), jnp.int32))
  if "image" in fields:
    images = (batch, cfg.data.chunks) if fields["image"] == 5 else (batch,)
    inputs["image"] = jnp.zeros((*images, cfg.data.image_size, cfg.data.image_size, 3), jnp.float32)
  return inputs


def param_shardings(boxed: Any, mesh) -> Any:
  """NamedShardings of the params, from the logical names the modules declare (`boxed`: the
  params as model.init returns them, abstract or not)."""
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, LOGICAL_RULES)
  check_shardable(nn.unbox(boxed), shardings)
  return shardings


def check_shardable(params: Any, shardings: Any) -> None:
  """Every sharded dimension must divide evenly over its mesh axes; fail naming the first that does not."""
  flat_params = traverse_util.flatten_dict(params, sep="/")
  flat_shardings = traverse_util.flatten_dict(shardings, sep="/")
  for path, leaf in flat_params.items():
    sharding = flat_shardings[path]
    for dim, (size, axes) in enumerate(zip(leaf.shape, sharding.spec)):
      axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
      ways = 1
      for axis in axes:
        ways *= sharding.mesh.shape[axis]
      if size % ways:
        raise ValueError(f"param {path} of shape {tuple(leaf.shape)} cannot be sharded on mesh "
                         f"{dict(sharding.mesh.shape)}: dimension {dim} ({size}) over {axes} = {ways} ways; "
                         f"use a mesh whose {'x'.join(axes)} size divides {size}")


def _init_fn(model: nn.Module, tx: optax.GradientTransformation, cfg, inputs: dict, with_boxed: bool = False):
  """rng -> TrainState; with `with_boxed`, (params with their logical names, TrainState)."""
  def init(rng):
    init_rng, state_rng = jax.random.split(rng)
    boxed = model.init(init_rng, **inputs)["params"]
    params = nn.unbox(boxed)
    trainable, _ = split_frozen(params, cfg.frozen)
    # The EMA starts as the initial weights, in buffers of its own (the step donates the state).
    ema = jax.tree.map(jnp.copy, trainable) if ema_lib.enabled(cfg) else None
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(trainable), rng=state_rng,
                       ema_params=ema, objective_state=_init_objective_state(model, cfg, params, inputs))
    return (boxed, state) if with_boxed else state
  return init


def _init_objective_state(model: nn.Module, cfg, params: Any, inputs: dict) -> Any:
  """The stateful objectives' initial states (objectives.init_state), from the model's output shapes."""
  if not objectives.keeps_state(cfg.objectives):
    return None
  given = {k: inputs[k] for k in model.inputs if k in inputs}  # a loss mask, where a model reads one, is optional
  outputs = jax.eval_shape(lambda p: model.apply({"params": p}, **given, train=False), params)
  micro_batch = cfg.batch_size // int(cfg.get("grad_accum_steps", 1))
  return objectives.init_state(cfg.objectives, outputs, micro_batch)


def plan_train_state(model: nn.Module, tx: optax.GradientTransformation, cfg, mesh, inputs: dict):
  """(abstract state, state_shardings) without computing anything: the state's ShapeDtypeStructs
  carrying their shardings (what a resume restores into, so it never compiles or runs the init),
  params sharded by their logical names, optimizer state like its params."""
  with nn.logical_axis_rules(LOGICAL_RULES):  # one trace gives the names and the state's shapes
    boxed, abstract = jax.eval_shape(_init_fn(model, tx, cfg, inputs, with_boxed=True), jax.random.PRNGKey(cfg.seed))
  p_sh = param_shardings(boxed, mesh)
  trainable_sh, _ = split_frozen(p_sh, cfg.frozen)
  opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract.opt_state, trainable_sh,
                                 transform_non_params=lambda _: replicated(mesh))
  shardings = TrainState(step=replicated(mesh), params=p_sh, opt_state=opt_sh, rng=replicated(mesh),
                         ema_params=trainable_sh if ema_lib.enabled(cfg) else None,
                         # Replicated: a queue is read whole by every device's rows.
                         objective_state=jax.tree.map(lambda _: replicated(mesh), abstract.objective_state))
  return abstract_state(shardings, abstract), shardings


def init_train_state(model: nn.Module, tx: optax.GradientTransformation, cfg, inputs: dict, shardings) -> TrainState:
  """The initial state of seed cfg.seed, params born sharded (`shardings` from plan_train_state)."""
  with nn.logical_axis_rules(LOGICAL_RULES):
    return jax.jit(_init_fn(model, tx, cfg, inputs), out_shardings=shardings)(jax.random.PRNGKey(cfg.seed))


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, cfg, mesh, inputs: dict):
  """(state, state_shardings): params born sharded, optimizer state sharded like its params."""
  _, shardings = plan_train_state(model, tx, cfg, mesh, inputs)
  return init_train_state(model, tx, cfg, inputs, shardings), shardings


def abstract_state(state_shardings, state_like) -> Any:
  """ShapeDtypeStructs carrying target shardings: what Orbax restores into."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state_like, state_shardings)
