"""File patterns: brace expansion (`shard-{00000..00099}.tar`, `{a,b}`), then globs, then a check."""

from __future__ import annotations

import glob
import os
import re

from etils import epath

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)")


def expand_braces(pattern: str) -> list[str]:
  """webdataset / bash brace expansion: `{000..002}` keeps the zero padding, `{a,b}` lists.

  Hand-written: neither grain nor the standard library expands braces, and the `braceexpand`
  package is not a dependency.
  """
  match = _BRACE.search(pattern)
  if not match:
    return [pattern]
  body = match.group(1)
  numeric = _RANGE.fullmatch(body)
  if numeric:
    lo, hi = numeric.groups()
    width = len(lo) if lo.lstrip("-").startswith("0") and len(lo.lstrip("-")) > 1 else 0
    step = 1 if int(hi) >= int(lo) else -1
    items = [str(i).zfill(width) for i in range(int(lo), int(hi) + step, step)]
  elif "," in body:
    items = body.split(",")
  else:  # "{x}" is not an expansion in bash either: keep it literally
    head, tail = pattern[:match.end()], pattern[match.end():]
    return [head + rest for rest in expand_braces(tail)]
  head, tail = pattern[:match.start()], pattern[match.end():]
  return [out for item in items for out in expand_braces(head + item + tail)]


def resolve_files(pattern: str, what: str, suffix: str | None = None) -> list[str]:
  """Files a pattern names, in order: braces expanded, globs sorted, a directory -> its `*suffix` files.

  Local paths and object stores (gs://, s3://: through etils.epath). Raises FileNotFoundError
  naming the pattern when it names nothing (empty glob, missing file).
  """
  if not pattern:
    raise ValueError(f"{what}: data.path is empty; give a file, a directory or a pattern")
  out: list[str] = []
  for part in expand_braces(os.path.expanduser(pattern)):
    if glob.has_magic(part):
      found = _glob(part)
      if not found:
        raise FileNotFoundError(f"{what}: the pattern {part!r} matches no file")
      out.extend(found)
    elif epath.Path(part).is_dir() and suffix:
      found = _glob(f"{part.rstrip('/')}/*{suffix}")
      if not found:
        raise FileNotFoundError(f"{what}: the directory {part!r} holds no *{suffix} file")
      out.extend(found)
    elif epath.Path(part).is_file():
      out.append(part)
    else:
      raise FileNotFoundError(f"{what}: {part!r} does not exist")
  return list(dict.fromkeys(out))  # a file named twice is read once


def _glob(pattern: str) -> list[str]:
  """Sorted files matching a glob; on object stores, epath globs below the pattern's fixed prefix."""
  if "://" not in pattern:
    return sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
  parts = pattern.split("/")
  fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
  base = epath.Path("/".join(parts[:fixed]))
  return sorted(os.fspath(p) for p in base.glob("/".join(parts[fixed:])) if p.is_file())
