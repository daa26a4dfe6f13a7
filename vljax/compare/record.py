"""DIR/suite.json: the resolved suite a comparison directory holds runs of. A rerun with another
suite (another definition, or other matched steps) is refused, naming what differs, before anything
runs: its runs would not be comparable with those already there."""

from __future__ import annotations

import json
import os
from typing import Any

from etils import epath

from vljax import metrics as metrics_lib

RECORD = "suite.json"


def read(workdir: str) -> dict[str, Any] | None:
  path = epath.Path(workdir) / RECORD
  return json.loads(path.read_text()) if path.exists() else None


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
  """Dotted paths where `new` differs from `old`, each with both values."""
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for key in list(old) + [k for k in new if k not in old]:
      path = f"{prefix}.{key}" if prefix else str(key)
      if key not in new:
        out.append(f"{path}: {old[key]!r} -> (absent)")
      elif key not in old:
        out.append(f"{path}: (absent) -> {new[key]!r}")
      else:
        out += differences(old[key], new[key], path)
    return out
  return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def check(workdir: str, record: dict[str, Any]) -> bool:
  """Whether DIR already holds this suite's record; ValueError when it holds another suite's, or
  files that are no comparison's."""
  old = read(workdir)
  if old is None:
    path = epath.Path(workdir)
    if path.exists() and any(path.iterdir()):
      raise ValueError(f"--workdir {workdir!r} holds files but no {RECORD}: it is no vljax.compare directory; "
                       "valid: a new or empty directory, or one this suite wrote")
    return False
  diff = differences(_runs_part(old), _runs_part(record))
  if diff:
    shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
    raise ValueError(f"--workdir {workdir!r} holds runs of another suite ({old.get('suite_file')}, its {RECORD}), "
                     f"differing in {shown}. Valid: that suite, or a new --workdir for this one")
  return True


def runs_definition(definition: dict[str, Any] | None) -> dict[str, Any]:
  """What of a suite's definition the runs depend on: all but the report's `rank_by`, which may
  change between reports."""
  return {k: v for k, v in (definition or {}).items() if k != "rank_by"}


def _runs_part(rec: dict[str, Any]) -> dict[str, Any]:
  return {"definition": runs_definition(rec.get("definition")), "arms": rec.get("arms")}


def write(workdir: str, record: dict[str, Any]) -> str:
  return metrics_lib.write_text(workdir, RECORD, json.dumps(record, indent=1) + "\n")


def absolute(workdir: str) -> str:
  """A local directory made absolute (the cluster plans hand it to other machines); gs:// as is."""
  return workdir if metrics_lib.is_object_store(workdir) else os.path.abspath(workdir)
