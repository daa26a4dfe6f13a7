"""vljax's commands compile CPU programs with their XLA settings (vljax/xla_cpu.py)."""

import json
import os
import subprocess
import sys

import pytest

from vljax import xla_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


SCHEDULE, YNN = "--xla_cpu_enable_concurrency_optimized_scheduler", "--xla_cpu_experimental_ynn_fusion_type"
ALL = f"{SCHEDULE}=false {YNN}=-individual_dot"


@pytest.mark.parametrize("before, after", [
    ("", ALL),
    ("--xla_cpu_max_isa=AVX2", f"--xla_cpu_max_isa=AVX2 {ALL}"),
    (f"{SCHEDULE}=true", f"{SCHEDULE}=true {YNN}=-individual_dot"),  # the user's choice stands
    (f" {YNN}= ", f"{YNN}= {SCHEDULE}=false"),  # an empty value is a choice too
    (f"{SCHEDULE}_x=1", f"{SCHEDULE}_x=1 {ALL}"),  # another flag whose name starts the same
])
def test_the_settings_join_the_users_xla_flags(before, after):
  assert xla_cpu.with_cpu_settings(before) == after


@pytest.mark.parametrize("argv, expected", [
    (["python", "-m", "vljax.train", "--config", "c.py"], ALL),
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
