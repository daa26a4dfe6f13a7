"""Checks of single evaluator settings, each failing with the setting, its value and what is valid."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _int_at_least(value, minimum: int, key: str, where: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{where}.{key}={value!r} is invalid; valid: an int >= {minimum}")
  return int(value)


def positive_int(settings: Mapping[str, Any], key: str, default, where: str) -> int | None:
  """settings[key] (or default) as an int >= 1; None stays None."""
  value = settings.get(key, default)
  return None if value is None else _int_at_least(value, 1, key, where)


def nonnegative_int(settings: Mapping[str, Any], key: str, default: int, where: str) -> int:
  """settings[key] (or default) as an int >= 0 (a seed)."""
  return _int_at_least(settings.get(key, default), 0, key, where)


def positive_float(settings: Mapping[str, Any], key: str, default: float, where: str) -> float:
  """settings[key] (or default) as a finite float > 0."""
  value = settings.get(key, default)
  if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not (
      math.isfinite(value) and value > 0):
    raise ValueError(f"{where}.{key}={value!r} is invalid; valid: a finite number > 0")
  return float(value)


def choice(settings: Mapping[str, Any], key: str, default: str, valid: Sequence[str], where: str) -> str:
  """settings[key] (or default), one of `valid`."""
  value = settings.get(key, default)
  if value not in valid:
    raise ValueError(f"{where}.{key}={value!r} is unknown; valid: {list(valid)}")
  return value


def subset(settings: Mapping[str, Any], key: str, default: Sequence[str], valid: Sequence[str],
           where: str) -> tuple[str, ...]:
  """settings[key] (or default): one of `valid` or a non-empty list of distinct ones, in the given order."""
  value = settings.get(key, default)
  names = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, (list, tuple)) else None
  if not names or any(n not in valid for n in names) or len(set(names)) != len(names):
    raise ValueError(f"{where}.{key}={value!r} is invalid; valid: one of {list(valid)} or a list of distinct ones")
  return names
