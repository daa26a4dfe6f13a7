"""KV-cached decoding against recomputing the whole prefix every step, same model, same tokens.

  python -m vljax.bench.decode [--config configs/coca_shapes.py | --workdir RUN] [--batch 16] [--tokens 32]

--workdir benches the model of a run's config.json, e.g. a language model `python -m vljax.convert
--checkpoint HF_DIR` imported (text-only models decode from BOS, with no image).

Random weights (speed does not depend on them); EOS is masked so every sequence runs `--tokens`
steps. Prints a table of the median wall time of each path and the ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from vljax import config as config_lib
from vljax import decode as decode_lib
from vljax.data import tokenizers
from vljax.models import decoder, get_model
from vljax.models.resolve import resolve_model_config
from vljax.parallel.sharding import LOGICAL_RULES


def machine_name() -> str:
  dev = jax.devices()[0]
  kind = dev.device_kind if dev.platform != "cpu" else (platform.processor() or platform.machine())
  return f"{dev.platform}: {kind}, {jax.device_count()} device(s), {os.cpu_count()} CPU cores"


def timed(fn, *args, repeats: int) -> float:
  """Median seconds of fn(*args) after one compiling call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def run(config: str | ml_collections.ConfigDict, batch: int, tokens: int, repeats: int) -> dict[str, float]:
  """`config`: a recipe's path or a loaded config."""
  name = config if isinstance(config, str) else "config"
  cfg = config_lib.load_config(config) if isinstance(config, str) else config
  cfg.data.max_len = max(cfg.data.max_len, tokens)
  tok = tokenizers.get_tokenizer(cfg.data.tokenizer)
  model = get_model(resolve_model_config(cfg, tok))
  if not hasattr(model, "decode_step"):
    raise ValueError(f"{name}: model {cfg.model.name!r} has no caption decoder to benchmark")
  size = cfg.data.image_size
  images = jax.random.normal(jax.random.PRNGKey(1), (batch, size, size, 3)) if "image" in model.inputs else None
  with nn.logical_axis_rules(LOGICAL_RULES):
    params = jax.jit(lambda r: nn.unbox(model.init(r, image=images, text=jnp.zeros((batch, tokens), jnp.int32))
                                        ["params"]))(jax.random.PRNGKey(0))
    memory = None if images is None else jax.jit(
        lambda p, x: model.apply({"params": p}, x, method="encode_image")["memory"])(params, images)
  options = decode_lib.DecodeOptions(method="greedy", max_len=tokens, min_len=tokens)
  special = dict(bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id, options=options)

  @jax.jit
  def cached(params, memory):
    cache = decoder.init_cache(model, params, memory, tokens, batch)
    return decode_lib.decode(decoder.make_step_fn(model, params), cache, batch, **special).tokens

  @jax.jit
  def recomputed(params, memory):
    step_fn, state = decoder.make_recompute_step_fn(model, params, memory, tokens, batch)
    return decode_lib.decode(step_fn, state, batch, **special).tokens

  same = bool(np.array_equal(cached(params, memory), recomputed(params, memory)))
  return {"cached_s": timed(cached, params, memory, repeats=repeats),
          "recompute_s": timed(recomputed, params, memory, repeats=repeats), "same_tokens": same}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/coca_shapes.py")
  parser.add_argument("--workdir", default="", help="bench the model of this run's config.json instead")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--tokens", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  config = args.config
  if args.workdir:
    try:
      config = config_lib.workdir_config(args.workdir, f"--workdir {args.workdir!r}")
    except FileNotFoundError as e:
      raise SystemExit(f"error: {e}") from None
  r = run(config, args.batch, args.tokens, args.repeats)
  print(f"machine: {machine_name()}")
  print(f"model: {args.workdir or args.config}; batch {args.batch}, {args.tokens} tokens, greedy; identical tokens: "
        f"{r['same_tokens']}")
  print("| path | ms per batch | tokens/s |\n|---|---|---|")
  for name, key in (("KV cache", "cached_s"), ("recompute prefix", "recompute_s")):
    print(f"| {name} | {1e3 * r[key]:.1f} | {args.batch * args.tokens / r[key]:.0f} |")
  print(f"speed-up of the cache: {r['recompute_s'] / r['cached_s']:.1f}x")


if __name__ == "__main__":
  main()
