"""Every notebook runs top to bottom (with its step count cut to a few steps)."""

import glob
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb"))),
                         ids=os.path.basename)
def test_notebook_runs(path, tmp_path):
  with open(path) as f:
    cells = [c for c in json.load(f)["cells"] if c["cell_type"] == "code"]
  code = "\n\n".join("".join(c["source"]) for c in cells)
  code = code.replace("STEPS = 300", "STEPS = 3").replace("/tmp/vljax_notebook_clip", str(tmp_path / "run"))
  script = tmp_path / "notebook.py"
  script.write_text(code)
  env = dict(os.environ, MPLBACKEND="Agg", JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, str(script)], cwd=os.path.dirname(path), env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "eval/zeroshot/top1" in proc.stdout
