"""vljax's commands re-execute themselves with huge pages for malloc (vljax/allocator.py), only where
that changes something, once, and never over a user's own choice."""

import json
import os
import subprocess
import sys

import pytest

from vljax import allocator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEW_GLIBC, THP = (2, 36), "madvise"


def test_huge_pages_are_added_to_the_users_tunables():
  env = allocator.huge_pages_env({"PATH": "/bin"}, NEW_GLIBC, THP)
  assert env == {"PATH": "/bin", "GLIBC_TUNABLES": allocator.TUNABLE, allocator.ENV: "hugetlb"}
  env = allocator.huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, NEW_GLIBC, "always")
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:" + allocator.TUNABLE


@pytest.mark.parametrize("environ, glibc, thp", [
    ({allocator.ENV: "system"}, NEW_GLIBC, THP),  # the user's opt-out
    ({allocator.ENV: "hugetlb"}, NEW_GLIBC, THP),  # already re-executed: no loop
    ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"}, NEW_GLIBC, THP),
    ({"LD_PRELOAD": "libjemalloc.so.2"}, NEW_GLIBC, THP),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, NEW_GLIBC, THP),  # the user's own setting
    ({}, (2, 31), THP),  # glibc before 2.35 has no such tunable
    ({}, None, THP),  # not glibc
    ({}, NEW_GLIBC, "never"),
    ({}, NEW_GLIBC, None),
])
def test_nothing_changes_where_it_would_not_help_or_the_user_chose(environ, glibc, thp):
  assert allocator.huge_pages_env(environ, glibc, thp) is None


@pytest.mark.parametrize("argv, expected", [
    (["python", "-m", "vljax.train", "--config", "c.py"], True),
    (["python3.11", "-X", "importtime", "-u", "-m", "vljax.compare", "--suite", "s.py"], True),
    (["python", "-m", "vljax.bench"], True),
    (["python", "-m", "vljax.evaluate"], True),
    (["python", "-m", "vljax.report", "--workdir", "w"], False),  # no XLA steps
    (["python", "-m", "pytest", "-m", "vljax.train"], False),
    (["python", "script.py", "-m", "vljax.train"], False),
    (["python", "-c", "import vljax", "-m", "vljax.train"], False),
    (["python"], False),
])
def test_only_vljax_commands_are_re_executed(argv, expected):
  assert allocator.running_command(argv) == expected


def test_thp_mode_reads_the_bracketed_setting(tmp_path):
  path = tmp_path / "enabled"
  path.write_text("always [madvise] never\n")
  assert allocator.thp_mode(str(path)) == "madvise"
  assert allocator.thp_mode(str(tmp_path / "missing")) is None


def test_importing_vljax_elsewhere_changes_nothing():
  """Only `python -m vljax.CMD` re-executes (tests/test_bench.py runs one and reads its allocator)."""
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", allocator.ENV)}
  code = "import os, json, vljax; print(json.dumps([os.environ.get('GLIBC_TUNABLES'), os.environ.get('VLJAX_MALLOC')]))"
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
  assert json.loads(out.stdout) == [None, None], out.stderr
