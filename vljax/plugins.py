"""Registries filled by files: a package whose modules each register themselves imports them all."""

from __future__ import annotations

import importlib
import pkgutil


def import_submodules(package_name: str, package_path) -> None:
  """Import every module of a package (its `__name__`, `__path__`), so adding one is adding a file."""
  for module in pkgutil.iter_modules(package_path):
    importlib.import_module(f"{package_name}.{module.name}")
