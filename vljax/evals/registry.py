"""Evaluator registry: config `evals` name -> evaluator class, filled by each evaluator file's
`@register_evaluator(name)`; nothing outside an evaluator's file lists its name.

An evaluator class declares `needs` (what it asks of the model: vljax.evals.requirements) and
`settings_keys` (every key its settings may hold, "every" among them), and is built as
`cls(settings, *, tokenizer, max_len, data)`: its settings, the run's tokenizer and text length,
and the run's data config (image size, normalisation, the shapes world's settings). One with a
`dataset` setting reads a set on disk and can run several times under names `<evaluator>_<label>`
(e.g. `zeroshot_imagenet`), each logging `eval/<evaluator>_<label>/<metric>`.
"""

from __future__ import annotations

import inspect
from typing import Callable

from vljax.plugins import add_unique

EVALUATORS: dict[str, type] = {}
BUILD_ARGS = ("tokenizer", "max_len", "data")  # the keyword arguments every evaluator is built with


def register_evaluator(name: str) -> Callable[[type], type]:
  """Decorator adding an evaluator class as `name` (and setting its `name`, which its errors and
  metric keys use), after checking it declares what the start-up checks read."""
  def wrap(cls: type) -> type:
    missing = [a for a in ("needs", "settings_keys") if not hasattr(cls, a)]
    if missing:
      raise TypeError(f"evaluator {name!r} ({cls.__name__}) declares no {missing}")
    if "every" not in cls.settings_keys:
      raise TypeError(f"evaluator {name!r} ({cls.__name__}): settings_keys must hold 'every'")
    params = inspect.signature(cls.__init__).parameters
    lacking = [a for a in BUILD_ARGS if getattr(params.get(a), "kind", None) is not inspect.Parameter.KEYWORD_ONLY]
    if lacking:
      raise TypeError(f"evaluator {name!r} ({cls.__name__}): __init__(settings, *, {', '.join(BUILD_ARGS)}) "
                      f"lacks keyword-only {lacking}")
    add_unique(EVALUATORS, "evaluator", name, cls)
    cls.name = name
    return cls
  return wrap


def reads_sets_on_disk(cls: type) -> bool:
  """Whether the evaluator has a `dataset` setting (and so may run as `<name>_<label>`)."""
  return "dataset" in cls.settings_keys


def labelled() -> list[str]:
  """The evaluators a config may name as `<evaluator>_<label>`, one per set on disk."""
  return sorted(name for name, cls in EVALUATORS.items() if reads_sets_on_disk(cls))


def get_evaluator(name: str) -> type:
  """The class of the config's `evals.<name>`: a registered name, or `<evaluator>_<label>`."""
  if name in EVALUATORS:
    return EVALUATORS[name]
  base, _, label = name.partition("_")
  if base in labelled() and label:
    return EVALUATORS[base]
  raise ValueError(f"evals: unknown evaluator {name!r}; valid: {sorted(EVALUATORS)}, or "
                   f"{' / '.join(f'{b}_<label>' for b in labelled())} for more datasets")
