"""Workdirs of tiny models with random weights, written without training or compiling anything: a
config.json and a step-0 checkpoint of the params, what vljax.load, init_from and CapFilt read."""

import jax
import numpy as np
from flax import linen as nn

from vljax import checkpoint_io, metrics as metrics_lib
from vljax.data import tokenizers
from vljax.models import get_model, registry
from vljax.models.resolve import resolve_model_config
from vljax.train import checkpoint as ckpt_lib, state as state_lib


def random_params(shapes_, rng):
  """Random weights of the given shapes (norm scales 1, biases 0), without compiling the model's init
  (which costs more than many of the jobs that read them)."""
  def fill(path, leaf):
    name = path[-1].key
    if name in ("scale", "bias"):
      return np.full(leaf.shape, 1.0 if name == "scale" else 0.0, np.float32)
    return rng.normal(0, 0.3 if name == "embedding" else 0.1, leaf.shape).astype(np.float32)
  return jax.tree_util.tree_map_with_path(fill, shapes_)


def write_random_workdir(path: str, cfg, seed: int = 0, checkpoint: bool = True) -> str:
  """`cfg`'s run with random weights at `path`; checkpoint=False writes its config.json alone."""
  metrics_lib.write_text(path, "config.json", cfg.to_json_best_effort(indent=2))
  if checkpoint:
    model = get_model(resolve_model_config(cfg, tokenizers.get_tokenizer(cfg.data.tokenizer)))
    shapes_ = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), **state_lib.dummy_inputs(cfg, 1))["params"])
    params = random_params(shapes_, np.random.default_rng(seed))
    saver = ckpt_lib.Checkpointer(path, every=0, keep=1, async_save=False)
    # The registered model's name, as the trainer records it (a legacy alias would mean a legacy layout).
    name = registry.canonical_config(cfg.model.to_dict())["name"]
    saver.save(0, {"params": params}, {}, {"model_name": name,
                                           "param_shapes": checkpoint_io.param_shapes(params)}, force=True)
    saver.close()
  return path
