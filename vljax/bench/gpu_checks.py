"""Numerics checks for an accelerator: bf16 and cuDNN attention against the XLA float32 path.

  python -m vljax.bench.gpu_checks [--recipe clip_vit_b16] [--tower_batch 4] [--json_out PATH]

1. `layers.attention` on bf16 inputs at a ViT-B/16 shape (8 x 197 tokens, 12 heads of 64) and a
   causal, key-padded text shape (8 x 77, 8 heads of 64), with impl "xla" and (GPU only) "cudnn",
   each against impl "xla" in float32 on the same inputs upcast: relative error
   ||out - ref|| / ||ref|| below ATTENTION_TOL.
2. One forward of the recipe's image and text towers with precision.compute_dtype=bfloat16
   (attention_impl "cudnn" on GPU, "xla" elsewhere) against the same params in float32 with
   attention_impl "xla": relative error of img_emb and txt_emb below TOWER_TOL.

The references run at matmul precision "highest": on GPU, float32 matmuls default to TF32.
Off GPU, cuDNN cannot run: the check says so and compares the bf16 XLA path alone. Exit 1 if a
comparison fails. vljax.bench.accelerator runs this before its benchmarks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

# bf16 keeps 8 significant bits (unit roundoff 2^-9 = 2e-3). Attention rounds q k^T's softmax
# weights and its output to bf16 once each: measured 1.7e-3 (CPU, XLA, both shapes); 2e-2 is 10x.
ATTENTION_TOL = 2e-2
# A tower rounds every matmul output, activation and residual add to bf16, 12 blocks deep; the
# errors add like a random walk (sqrt of ~70 roundings of 2e-3 ~ 1.7e-2) and the final LayerNorm
# and l2 normalisation do not grow them. Measured (CPU, XLA, clip_vit_b16 at batch 4): img_emb 9.3e-3,
# txt_emb 1.0e-2; 3e-2 leaves a 3x margin. A wrong kernel or mask gives errors of order 1.
TOWER_TOL = 3e-2
# name: (batch, tokens, heads, head_dim, causal); causal shapes also mask padded keys, as text towers do.
ATTENTION_SHAPES = {"vit_b16": (8, 197, 12, 64, False), "text_causal": (8, 77, 8, 64, True)}
CUDNN_MARKER = "__cudnn$fmha"  # custom-call target of jax's cuDNN fused attention
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def relative_error(out, ref) -> float:
  """||out - ref|| / ||ref|| over all elements, in float64."""
  import numpy as np
  out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
  return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def gpu_here() -> bool:
  import jax
  return jax.default_backend() == "gpu"


def attention_inputs(batch: int, tokens: int, heads: int, head_dim: int, causal: bool, seed: int = 0):
  """(q, k, v) in bf16 drawn from N(0, 1), and for causal shapes a key mask [B,1,1,S] keeping the first
  half to all of each row (no query row is fully masked: key 0 is always kept)."""
  import jax
  import jax.numpy as jnp
  kq, kk, kv, kl = jax.random.split(jax.random.PRNGKey(seed), 4)
  shape = (batch, tokens, heads, head_dim)
  q, k, v = (jax.random.normal(key, shape, jnp.float32).astype(jnp.bfloat16) for key in (kq, kk, kv))
  mask = None
  if causal:
    lengths = jax.random.randint(kl, (batch, 1), max(1, tokens // 2), tokens + 1)
    mask = (jnp.arange(tokens)[None] < lengths)[:, None, None, :]
  return q, k, v, mask


def check_attention(name: str, batch: int, tokens: int, heads: int, head_dim: int, causal: bool,
                    seed: int = 0, tol: float = ATTENTION_TOL) -> dict[str, Any]:
  """Relative errors of bf16 attention ("xla", and "cudnn" on GPU) against float32 XLA."""
  import jax
  import jax.numpy as jnp
  from vljax.models import layers
  q, k, v, mask = attention_inputs(batch, tokens, heads, head_dim, causal, seed)
  f32 = [x.astype(jnp.float32) for x in (q, k, v)]
  with jax.default_matmul_precision("highest"):
    ref = jax.jit(lambda q, k, v, m: layers.attention(q, k, v, m, causal, "xla"))(*f32, mask)
  errors, failures, cudnn_ran = {}, {}, None
  for impl in ("xla", "cudnn") if gpu_here() else ("xla",):
    fn = jax.jit(lambda q, k, v, m, impl=impl: layers.attention(q, k, v, m, causal, impl))
    try:
      if impl == "cudnn":  # layers.attention falls back to XLA when cuDNN refuses: see which ran
        cudnn_ran = CUDNN_MARKER in fn.lower(q, k, v, mask).as_text()
      errors[impl] = relative_error(fn(q, k, v, mask), ref)
    except Exception as e:  # a kernel that fails to compile or run is a finding; the other checks go on
      errors[impl], failures[impl] = None, _one_line(e)
  return _verdict({"check": f"attention {name}", "shape": [batch, tokens, heads, head_dim], "causal": causal,
                   "errors": errors, "failures": failures, "tolerance": tol, "cudnn_ran": cudnn_ran})


def _one_line(e: BaseException) -> str:
  first = (str(e).strip().splitlines() or [""])[0]
  return f"{type(e).__name__}: {first[:200]}"


def _verdict(result: dict[str, Any]) -> dict[str, Any]:
  """ok: every error measured and below the tolerance."""
  errors = result["errors"].values()
  return dict(result, ok=all(e is not None and e < result["tolerance"] for e in errors))


def _forward(cfg, compute_dtype: str, attention_impl: str, params=None):
  """(model outputs on a synthetic batch, params, lowered text) of cfg built as the trainer builds it."""
  import jax
  import ml_collections
  from flax import linen as nn
  from vljax.bench.train import synthetic_batch
  from vljax.parallel.mesh import make_mesh
  from vljax.parallel.sharding import LOGICAL_RULES
  from vljax.train import setup, state as state_lib
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  cfg.precision.compute_dtype, cfg.model.attention_impl, cfg.evals = compute_dtype, attention_impl, {}
  parts = setup.build(cfg)
  mesh = make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  batch = synthetic_batch(cfg, parts.tokenizer, mesh, seed=cfg.seed)
  inputs = {k: v for k, v in batch.items() if k in ("image", "text")}
  with nn.logical_axis_rules(LOGICAL_RULES):
    if params is None:
      dummy = state_lib.dummy_inputs(cfg, cfg.batch_size)
      params = jax.jit(lambda r: nn.unbox(parts.model.init(r, **dummy)["params"]))(jax.random.PRNGKey(cfg.seed))
    lowered = jax.jit(lambda p, x: parts.model.apply({"params": p}, **x)).lower(params, inputs)
    return lowered.compile()(params, inputs), params, lowered.as_text()


def check_towers(cfg, batch: int = 4, tol: float = TOWER_TOL) -> dict[str, Any]:
  """Relative error of the embeddings of cfg's towers in bf16 against float32, same params."""
  import jax
  cfg = cfg.copy_and_resolve_references()
  cfg.batch_size = batch
  with jax.default_matmul_precision("highest"):
    ref, params, _ = _forward(cfg, "float32", "xla")
  keys = [k for k in ("img_emb", "txt_emb") if k in ref]
  if not keys:
    raise ValueError(f"model {cfg.model.name!r} gives no img_emb/txt_emb to compare; valid: a recipe with a "
                     "contrastive head, e.g. clip_vit_b16")
  impl = "cudnn" if gpu_here() else "xla"
  result = {"check": f"towers {cfg.model.name} bf16 ({impl} attention)", "batch": batch, "errors": {},
            "failures": {}, "tolerance": tol, "cudnn_ran": None}
  try:
    out, _, text = _forward(cfg, "bfloat16", impl, params)
    result["errors"] = {k: relative_error(out[k], ref[k]) for k in keys}
    result["cudnn_ran"] = CUDNN_MARKER in text if impl == "cudnn" else None
  except Exception as e:  # e.g. a cuDNN kernel XLA fails to compile: reported, not a crash
    result["errors"], result["failures"] = dict.fromkeys(keys), {"bfloat16": _one_line(e)}
  return _verdict(result)


def describe(result: dict[str, Any]) -> str:
  """One line per check: each error against its tolerance, and whether cuDNN really ran."""
  errs = ", ".join(f"{k} {'n/a' if v is None else f'{v:.2e}'}" for k, v in result["errors"].items())
  verdict = "ok  " if result["ok"] else "FAIL"
  line = f"{verdict} {result['check']}: rel. error {errs} (tolerance {result['tolerance']:g})"
  line += "".join(f"; {k} failed: {why}" for k, why in result.get("failures", {}).items())
  if result["cudnn_ran"] is False:  # the numbers are XLA's: this shape never reaches cuDNN in training either
    line += "; NOTE cuDNN refused this shape, layers.attention used XLA"
  return line


def run_checks(cfg, attention_shapes: dict | None = None, tower_batch: int = 4) -> dict[str, Any]:
  """Every check, printed as it finishes; the JSON-able summary."""
  import jax
  backend = jax.default_backend()
  if backend != "gpu":
    print(f"note: cuDNN unavailable here (JAX backend {backend!r}, not 'gpu'): the cuDNN comparisons are "
          "skipped; the bf16 XLA path is still checked against float32", flush=True)
  results = []
  for name, shape in (ATTENTION_SHAPES if attention_shapes is None else attention_shapes).items():
    results.append(check_attention(name, *shape))
    print(describe(results[-1]), flush=True)
  results.append(check_towers(cfg, tower_batch))
  print(describe(results[-1]), flush=True)
  return {"backend": backend, "device_kind": jax.devices()[0].device_kind, "cudnn_available": backend == "gpu",
          "ok": all(r["ok"] for r in results), "checks": results}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m vljax.bench.gpu_checks", description=__doc__.split("\n\n")[0])
  parser.add_argument("--recipe", default="clip_vit_b16", help="configs/NAME.py whose towers are compared")
  parser.add_argument("--tower_batch", type=int, default=4, help="examples in the tower forward")
  parser.add_argument("--json_out", default=None, help="also write the summary as JSON to this file")
  args = parser.parse_args(argv)
  path = os.path.join(ROOT, "configs", f"{args.recipe}.py")
  problem = (f"--recipe {args.recipe!r}: no file {path}" if not os.path.isfile(path) else
             f"--tower_batch={args.tower_batch} must be >= 1" if args.tower_batch < 1 else None)
  if problem:
    print(f"error: {problem}", file=sys.stderr)
    return 2
  from vljax import config as config_lib
  summary = run_checks(config_lib.load_config(path), tower_batch=args.tower_batch)
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(summary, f, indent=1)
  print(f"numerics checks: {'all ok' if summary['ok'] else 'FAILED'}", flush=True)
  return 0 if summary["ok"] else 1


if __name__ == "__main__":
  sys.exit(main())
