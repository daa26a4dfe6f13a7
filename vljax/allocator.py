"""Huge pages for malloc in vljax's commands (`python -m vljax.train`, bench, evaluate, compare).

XLA's CPU buffers come from malloc. glibc serves large blocks with mmap and unmaps them on free, so
every train step maps, zeroes and faults in its temporaries again: on a 2-core CPU a third of the
step's time was the kernel's. Backed by transparent huge pages (glibc >= 2.35, THP in `madvise` or
`always` mode) the same step is ~1.5x faster, with the same numbers. glibc reads GLIBC_TUNABLES only
when a process starts, so a command re-executes itself once with the tunable set: from vljax's
package import, which `python -m vljax.CMD` runs before anything imports JAX. Left alone: another
allocator already preloaded (tcmalloc, jemalloc, mimalloc), a tunable the user set,
`VLJAX_MALLOC=system`, and systems without glibc 2.35 or THP.
"""

from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
ENV = "VLJAX_MALLOC"  # "system": leave malloc as it is; "hugetlb": set by the re-exec (no loop)
PRELOADED_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")
# What runs XLA steps, and the input benchmark (measured under the allocator training runs with).
COMMANDS = ("vljax.train", "vljax.bench", "vljax.evaluate", "vljax.compare", "vljax.bench.input")
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
THP_MODES_FOR_MALLOC = ("always", "madvise")  # "never": glibc's madvise asks for nothing


def glibc_version() -> tuple[int, ...] | None:
  """(2, 36) for glibc 2.36; None elsewhere (musl, macOS)."""
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
  except (AttributeError, ValueError, OSError):
    return None
  return tuple(int(x) for x in version.split(".")[:2]) if name == "glibc" else None


def thp_mode(path: str = THP_SETTING) -> str | None:
  """The bracketed word of the kernel's THP setting ('always', 'madvise', 'never'), None if unknown."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


def huge_pages_env(environ: dict[str, str], glibc: tuple[int, ...] | None, thp: str | None) -> dict[str, str] | None:
  """The environment to re-execute with, or None where nothing should change."""
  if environ.get(ENV) or any(a in environ.get("LD_PRELOAD", "") for a in PRELOADED_ALLOCATORS):
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  if "glibc.malloc.hugetlb" in tunables or glibc is None or glibc < (2, 35) or thp not in THP_MODES_FOR_MALLOC:
    return None
  return dict(environ, GLIBC_TUNABLES=":".join(t for t in (tunables, TUNABLE) if t), **{ENV: "hugetlb"})


def running_command(argv: list[str]) -> bool:
  """Whether the interpreter's command line (sys.orig_argv) is `python [options] -m vljax.CMD ...`
  for a CMD of COMMANDS."""
  i = 1
  while i < len(argv):
    if argv[i] == "-m":
      return i + 1 < len(argv) and argv[i + 1] in COMMANDS
    if argv[i] in ("-X", "-W"):  # options that take a value
      i += 2
    elif argv[i].startswith("-") and argv[i] not in ("-", "-c"):
      i += 1
    else:  # a script, stdin or -c: not a vljax command
      return False
  return False


def reexec_with_huge_pages() -> None:
  """Re-execute this process (same interpreter, same arguments) with huge pages for malloc if it
  is one of vljax's commands and that would make a difference here; otherwise return."""
  if sys.platform != "linux" or not running_command(getattr(sys, "orig_argv", [])):
    return
  env = huge_pages_env(dict(os.environ), glibc_version(), thp_mode())
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, env)


def describe(environ: dict[str, str] | None = None) -> str:
  """The allocator this process runs with, for benchmark tables (step times depend on it)."""
  environ = os.environ if environ is None else environ
  preload = environ.get("LD_PRELOAD", "")
  for name in PRELOADED_ALLOCATORS:
    if name in preload:
      return f"{name} (LD_PRELOAD)"
  if glibc_version() is None:
    return "system"
  huge = TUNABLE in environ.get("GLIBC_TUNABLES", "") and thp_mode() in THP_MODES_FOR_MALLOC
  return "glibc, huge pages (GLIBC_TUNABLES)" if huge else "glibc"
