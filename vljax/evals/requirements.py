"""The start-up check that every evaluator gets what it needs from the model.

A mismatch found here fails the run before the workdir is touched, not at its first evaluation.
What a model can do is what its class declares (`capabilities`, vljax/models/capabilities.py).
An evaluator declares what it needs by `needs`, and what some of its settings need when set (not 0
or absent) by `option_needs` (setting -> capability: retrieval's and zero-shot's itm_k, an ITM head).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vljax.evals import itm_rerank
from vljax.models.capabilities import (DESCRIPTIONS, EMBEDDINGS, GENERATION, IMAGE_FEATURES,  # noqa: F401
                                       LIKELIHOOD, MATCHING, MULTI_IMAGE, PROMPTED, SCORING_NEEDS, describe)
from vljax.models.capabilities import of as model_capabilities

SCORES = "scores"  # an evaluator's `needs`: EMBEDDINGS or LIKELIHOOD, as its `scoring` setting picks


def _shots(settings: Mapping[str, Any]) -> tuple:
  shots = settings.get("shots", None)
  if shots is None:
    return ()
  return tuple(shots) if isinstance(shots, (list, tuple)) else (shots,)


def evaluator_needs(cls: type, settings: Mapping[str, Any]) -> tuple[tuple[str, ...], str]:
  """(capabilities of which any one suffices, the setting that decides it)."""
  if cls.needs == SCORES:
    scoring = settings.get("scoring", "auto")
    return SCORING_NEEDS[scoring], f"scoring={scoring!r}"
  if cls.needs == IMAGE_FEATURES:  # frozen-encoder probes: its `shots` are probe examples, not prompts
    return (IMAGE_FEATURES,), "frozen image features"
  shots = _shots(settings)
  if cls.needs == GENERATION and not shots:
    return (GENERATION,), "captioning"
  if any(isinstance(k, int) and k > 0 for k in shots):
    return (MULTI_IMAGE,), f"shots={shots}"
  return (PROMPTED,), f"shots={shots or (0,)}"


def check_evaluators(evaluator_classes: Mapping[str, type], evals_cfg: Mapping[str, Any], model: Any,
                     model_name: str, models: Mapping[str, type]) -> None:
  """Every evaluator can run on `model`; else an error naming the evaluator, the model and what would work."""
  caps = model_capabilities(model)
  for name, cls in evaluator_classes.items():
    settings = evals_cfg[name]
    _check_option_needs(name, cls, settings, caps, model_name, models)
    options, why = evaluator_needs(cls, settings)
    if caps & set(options):
      continue
    need = " or ".join(DESCRIPTIONS[o] for o in options)
    fits = [m for m, c in sorted(models.items()) if set(options) & model_capabilities(c)]
    hint = [f"a model with it ({', '.join(fits)})" if fits else "another model"]
    if cls.needs == SCORES:
      other = [s for s, needs in SCORING_NEEDS.items() if s != "auto" and caps & set(needs)]
      hint = [f"evals.{name}.scoring={s!r}" for s in other] + hint
    if cls.needs in (GENERATION, PROMPTED) and _shots(settings) and PROMPTED in caps:
      hint.insert(0, f"evals.{name}.shots=(0,)")
    raise ValueError(
        f"evals.{name} ({why}) needs {need}; model {model_name!r} has {describe(caps)}. "
        f"Valid: {' or '.join(hint)}, or drop evals.{name}.")


def _check_option_needs(name: str, cls: type, settings: Mapping[str, Any], caps: frozenset, model_name: str,
                        models: Mapping[str, type]) -> None:
  for key, capability in getattr(cls, "option_needs", {}).items():
    value = settings.get(key, None)
    if not value or capability in caps:
      continue
    fits = [m for m, c in sorted(models.items()) if capability in model_capabilities(c)]
    raise ValueError(f"evals.{name}.{key}={value!r} needs a model with {DESCRIPTIONS[capability]}; model "
                     f"{model_name!r} has {describe(caps)}. Valid: evals.{name}.{key}=0 (off), or a model with it "
                     f"({', '.join(fits) or 'none registered'})")


def check_settings(name: str, cls: type, settings: Mapping[str, Any]) -> None:
  """The settings every evaluator shares, before it renders anything: known keys, `every`, `scoring`,
  `itm_k`."""
  unknown = sorted(set(settings.keys()) - set(cls.settings_keys))
  if unknown:
    raise ValueError(f"evals.{name}: unknown key(s) {unknown}; valid: {sorted(cls.settings_keys)}")
  every = settings.get("every", 0)
  if isinstance(every, bool) or not isinstance(every, int) or every < 0:
    raise ValueError(f"evals.{name}.every={every!r} is invalid; valid: an int >= 0 (0: at the end only)")
  if cls.needs == SCORES and settings.get("scoring", "auto") not in SCORING_NEEDS:
    raise ValueError(f"evals.{name}.scoring={settings.get('scoring')!r} is unknown; valid: {list(SCORING_NEEDS)}")
  if itm_rerank.KEY in cls.settings_keys:
    itm_rerank.check_itm_k(settings, f"evals.{name}")
