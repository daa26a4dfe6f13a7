"""The trainer's first-step loss and gradients under any process layout, written to an .npz.

    python tests/first_step.py --config configs/clip_shapes.py --out F.npz [--config.KEY=VALUE ...]
        [--coordinator_address=HOST:PORT --num_processes=N --process_id=I]

Builds the run exactly as `vljax.train` does (config, mesh, sharded initial state, the first global
batch of the data pipeline, the train step's gradient function) and saves, from process 0: `loss`,
`grad/<param path>`, `param/<param path>` and `batch/<key>`, so a test can compare two layouts
directly and bound their difference from what they reduce.
"""

from __future__ import annotations

import sys

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from vljax.config import put_recipe_dirs_on_path

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file", lock_config=True)
_OUT = flags.DEFINE_string("out", None, "Where process 0 writes the .npz")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "How many processes")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index")
flags.mark_flags_as_required(["config", "out"])


def loss_and_grads(cfg, model, state, batch: dict):
  """The train step's loss and gradients (trainable params) of `batch`, before any update (under the mesh)."""
  import jax
  from flax import linen as nn

  from vljax.parallel.sharding import LOGICAL_RULES
  from vljax.train import step as step_lib
  from vljax.train.optim import split_frozen

  grads_fn = step_lib.make_grads_fn(model, cfg)

  @jax.jit
  def run(state, batch):
    trainable, frozen = split_frozen(state.params, list(cfg.frozen))
    with nn.logical_axis_rules(LOGICAL_RULES):
      loss, _, grads = grads_fn(trainable, jax.lax.stop_gradient(frozen), batch,
                                jax.random.fold_in(state.rng, state.step))
    return loss, grads

  return run(state, batch)


def first_step(cfg, mesh=None, local_batch: dict | None = None, initial=None) -> dict[str, np.ndarray]:
  """{loss, grad/..., param/..., batch/...} of the first train step on `mesh` (default: the config's)
  and `local_batch` (default: this process's first batch of the pipeline), gathered to every process;
  from `initial` (a train state on the host, placed onto the mesh's layout) or the state initialised
  on the mesh."""
  import jax
  from flax import traverse_util
  from jax.experimental import multihost_utils

  from vljax.data.sources import skips as skips_lib
  from vljax.parallel.mesh import batch_shards, make_mesh
  from vljax.train import setup, state as state_lib
  from vljax.train.trainer import _global_batch

  parts = setup.build(cfg)
  mesh = mesh or make_mesh(cfg.mesh)
  with jax.set_mesh(mesh):
    inputs = state_lib.dummy_inputs(cfg, batch_shards(mesh))
    if initial is None:
      state, _ = state_lib.create_train_state(parts.model, parts.tx, cfg, mesh, inputs)
    else:
      state = jax.device_put(initial, state_lib.plan_train_state(parts.model, parts.tx, cfg, mesh, inputs)[1])
    if local_batch is None:
      data = setup.make_data_iterator(cfg, parts.tokenizer, jax.process_index(), jax.process_count())
      local_batch = skips_lib.SkipTotals().pop(next(data))
      data.close()
    batch = _global_batch(local_batch, mesh)
    loss, grads = loss_and_grads(cfg, parts.model, state, batch)
    gathered = multihost_utils.process_allgather(
        {"loss": loss, "grad": grads, "param": state.params, "batch": batch}, tiled=True)
  out = {"loss": np.asarray(gathered["loss"])}
  for group in ("grad", "param", "batch"):
    out.update({f"{group}/{k}": np.asarray(v)
                for k, v in traverse_util.flatten_dict(gathered[group], sep="/").items()})
  return out


def main(argv):
  del argv
  from vljax.parallel import distributed

  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  import jax

  out = first_step(_CONFIG.value)
  if jax.process_index() == 0:
    np.savez(_OUT.value, **out)


if __name__ == "__main__":
  put_recipe_dirs_on_path(sys.argv)  # the recipe's `import common`, before absl loads it
  app.run(main)
