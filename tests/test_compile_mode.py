"""The suite's compile mode (tests/conftest.py): how this run compiles, and a bad mode named."""

import os
import subprocess
import sys

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_run_compiles_in_its_mode_and_passes_it_on():
  fast = os.environ.get("VLJAX_TEST_COMPILE", "fast") == "fast"
  assert jax.config.read("jax_disable_most_optimizations") == fast
  assert (os.environ.get("JAX_DISABLE_MOST_OPTIMIZATIONS") == "1") == fast  # what started processes read


def test_an_unknown_mode_is_a_usage_error_naming_the_valid_ones():
  env = dict(os.environ, VLJAX_TEST_COMPILE="fastest")
  proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                         "tests/test_compile_mode.py"], cwd=ROOT, env=env, capture_output=True, text=True)
  assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]  # pytest's usage-error status
  assert "VLJAX_TEST_COMPILE='fastest': must be one of fast, full" in proc.stderr
