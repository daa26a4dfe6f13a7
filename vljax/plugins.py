"""Registries filled by files: a package whose modules each register themselves imports them all."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any


def add_unique(registry: dict, kind: str, name: str, entry: Any, owner: Callable[[Any], Any] = lambda e: e) -> None:
  """registry[name] = entry, refusing another owner (the class or function behind an entry) under a
  taken name; re-importing a module registers the same owner again, which is fine."""
  if name in registry and owner(registry[name]) is not owner(entry):
    taken = owner(registry[name])
    raise ValueError(f"{kind} {name!r} is already registered to {getattr(taken, '__name__', taken)!s}")
  registry[name] = entry


def import_submodules(package_name: str, package_path) -> None:
  """Import every module of a package (its `__name__`, `__path__`), so adding one is adding a file."""
  for module in pkgutil.iter_modules(package_path):
    importlib.import_module(f"{package_name}.{module.name}")
