"""`python -m vljax.evaluate --workdir DIR --evals NAME[,NAME...] [--config.evals.NAME.KEY=VALUE ...] [--step N]`

Evaluates a trained or imported workdir without training: its config.json and its latest checkpoint
(or --step), read through vljax.inference's loading, not the trainer. Each evaluator starts from the
settings the run's config gives it (none when the config has no such evaluator), then the command
line's. The results are appended to DIR/metrics.jsonl (and DIR/tb/) at the step evaluated, with the
trainer's keys `eval/<evaluator>/<metric>`: DESIGN.md makes metrics.jsonl the run's append-only metric
record whose readers keep the last value per (step, key), so the report and comparisons read these
rows with the training ones. Every name, setting and the step are checked before anything is
rendered, loaded or written.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Sequence
from typing import Any

import ml_collections
from etils import epath

OVERRIDE_PREFIX = "--config.evals."


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, dict[str, dict[str, Any]]]:
  """(--workdir, --evals, --step; {evaluator: {key: value}} from --config.evals.NAME.KEY=VALUE)."""
  parser = argparse.ArgumentParser(prog="python -m vljax.evaluate", description=__doc__.split("\n\n")[1])
  parser.add_argument("--workdir", required=True, help="a vljax run directory (config.json, checkpoints/)")
  parser.add_argument("--evals", required=True, help="comma-separated evaluator names, e.g. fewshot,retrieval")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  args, rest = parser.parse_known_args(argv)
  overrides: dict[str, dict[str, Any]] = {}
  for item in rest:
    key, eq, text = item.partition("=")
    name, _, setting = key[len(OVERRIDE_PREFIX):].partition(".")
    if not key.startswith(OVERRIDE_PREFIX) or not eq or not name or not setting or "." in setting:
      raise ValueError(f"argument {item!r} is not understood; valid: --config.evals.NAME.KEY=VALUE "
                       "(the model and data are the run's: only evaluator settings change)")
    overrides.setdefault(name, {})[setting] = _value(text)
  args.evals = [n.strip() for n in args.evals.split(",") if n.strip()]
  return args, overrides


def _value(text: str) -> Any:
  """A Python literal (3, 0.5, (1, 5), "x", None), else the text itself."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _settings(cfg: ml_collections.ConfigDict, names: list[str], overrides: dict) -> dict[str, dict]:
  """Each evaluator's settings: the run's config, then the command line's; `every` is moot here."""
  stray = sorted(set(overrides) - set(names))
  if stray:
    raise ValueError(f"--config.evals.{stray[0]}.* sets an evaluator not in --evals; valid: {names}")
  saved = cfg.get("evals", None) or {}
  out = {}
  for name in names:
    base = saved.get(name, None)
    out[name] = {**(base.to_dict() if hasattr(base, "to_dict") else dict(base or {})), **overrides.get(name, {})}
  return out


def _check_step(workdir: str, step: int | None) -> int:
  from vljax import checkpoint_io
  steps = checkpoint_io.checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(f"workdir {workdir!r} has no finished checkpoint in "
                            f"{checkpoint_io.checkpoint_dir(workdir)!r}; train it (or import weights) first")
  if step is None:
    return steps[-1]
  if step not in steps:
    raise ValueError(f"--step {step}: {workdir!r} has no checkpoint at that step; valid: {steps}")
  return step


def plan(workdir: str, names: list[str], overrides: dict, step: int | None):
  """Everything checked, nothing computed: (config, evaluator classes, settings, tokenizer, model, step)."""
  from vljax import evals, models
  from vljax.data import tokenizers
  from vljax.evals import requirements, world
  from vljax.models.resolve import resolve_model_config

  path = epath.Path(workdir) / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{str(path)!r} does not exist; is {workdir!r} a vljax workdir?")
  if not names:
    raise ValueError(f"--evals names no evaluator; valid: {sorted(evals.EVALUATORS)}")
  cfg = ml_collections.ConfigDict(json.loads(path.read_text()))
  classes = {name: evals.get_evaluator(name) for name in names}
  settings = _settings(cfg, names, overrides)
  for name, cls in classes.items():
    requirements.check_settings(name, cls, settings[name])
  tokenizer = tokenizers.get_tokenizer(cfg.data.tokenizer)
  model = models.get_model(resolve_model_config(cfg, tokenizer))
  requirements.check_evaluators(classes, settings, model, cfg.model.name, models.MODELS)
  world.check_world_readers(classes, settings, cfg.data)
  return cfg, classes, settings, tokenizer, model, _check_step(workdir, step)


def evaluate(workdir: str, names: list[str], overrides: dict | None = None,
             step: int | None = None) -> tuple[int, dict[str, float]]:
  """(step evaluated, {eval/<name>/<metric>: value}), also appended to workdir/metrics.jsonl."""
  import jax

  from vljax import checkpoint_io, metrics as metrics_lib
  from vljax.inference.runner import ModelRunner
  from vljax.parallel.mesh import make_mesh
  from vljax.parallel.sharding import replicated

  cfg, classes, settings, tokenizer, model, step = plan(workdir, names, overrides or {}, step)
  built = {name: cls(settings[name], tokenizer=tokenizer, max_len=cfg.data.max_len, data=cfg.data)
           for name, cls in classes.items()}
  mesh = make_mesh({"data": -1})
  params, step = checkpoint_io.load_params(workdir, step, purpose="vljax.evaluate",
                                           weights=checkpoint_io.evaluated_weights(cfg))
  runner = ModelRunner(model, mesh, cfg.eval_batch_size, tokenizer)
  out = {}
  with jax.set_mesh(mesh):
    params = jax.device_put(params, replicated(mesh))
    for name, evaluator in built.items():
      out.update({f"eval/{name}/{k}": float(v) for k, v in evaluator(runner, params).items()})
  writer = metrics_lib.MetricWriter(workdir)
  try:
    writer.write(step, out)
  finally:
    writer.close()
  return step, out


def main(argv: Sequence[str] | None = None) -> int:
  try:
    args, overrides = parse_args(argv)
    step, out = evaluate(args.workdir, args.evals, overrides, args.step)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps({"step": step, **out}, indent=1, sort_keys=True))
  return 0


if __name__ == "__main__":
  sys.exit(main())
