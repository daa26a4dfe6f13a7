"""vljax's commands compile CPU programs with XLA's memory-ordered schedule (vljax/xla_cpu.py)."""

import json
import os
import subprocess
import sys

import pytest

from vljax import xla_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("before, after", [
    ("", xla_cpu.SETTING),
    ("--xla_cpu_max_isa=AVX2", f"--xla_cpu_max_isa=AVX2 {xla_cpu.SETTING}"),
    (f"{xla_cpu.FLAG}=true", f"{xla_cpu.FLAG}=true"),  # the user's choice stands
])
def test_the_flag_joins_the_users_xla_flags(before, after):
  assert xla_cpu.with_memory_ordered_schedule(before) == after


@pytest.mark.parametrize("argv, expected", [
    (["python", "-m", "vljax.train", "--config", "c.py"], xla_cpu.SETTING),
    (["python", "-m", "vljax.report", "--workdir", "w"], None),  # compiles no steps
    (["python", "script.py"], None),
])
def test_only_vljax_commands_set_it(monkeypatch, argv, expected):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setattr(sys, "orig_argv", argv)
  xla_cpu.set_for_commands()
  assert os.environ.get("XLA_FLAGS") == expected


def test_importing_vljax_elsewhere_leaves_xla_flags_alone():
  """(`python -m vljax.bench` reports the flags it ran with: tests/test_bench.py.)"""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  code = "import os, json, vljax; print(json.dumps(os.environ.get('XLA_FLAGS')))"
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert json.loads(out.stdout) is None, out.stderr
