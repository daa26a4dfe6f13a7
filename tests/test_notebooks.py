"""Every notebook runs top to bottom in a Jupyter kernel (nbclient, notebooks/execute.py), its
parameters cell overridden to a few steps on small evaluation sets; an error in any cell fails."""

import glob
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "notebooks"))

import execute  # noqa: E402  (notebooks/execute.py)

NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
# What CI runs of each notebook: the same cells, at these parameters.
QUICK = {"clip_shapes.ipynb": dict(STEPS=3, BATCH_SIZE=32, EVAL_EXAMPLES=64),
         "generative_shapes.ipynb": dict(STEPS=3, BATCH_SIZE=32, EVAL_EXAMPLES=32, DECODE_TOKENS=8)}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, tmp_path, monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)  # the kernel runs at this CPU's own instruction set
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  name = os.path.basename(path)
  assert name in QUICK, f"{name}: give its quick parameters in QUICK"
  nb = execute.execute(path, dict(QUICK[name], WORKDIR=str(tmp_path / "run")), timeout=600)
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
  assert "eval/zeroshot/top1" in text
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) >= 2  # e.g. the world's examples and the loss curve; captions and attention maps


def test_parameters_are_injected_after_the_parameters_cell_and_checked():
  import nbformat
  nb = nbformat.read(NOTEBOOKS[0], as_version=4)
  out = execute.with_parameters(nb, {"STEPS": 3})
  tags = [c.metadata.get("tags", []) for c in out.cells]
  at = next(i for i, t in enumerate(tags) if "parameters" in t)
  assert "injected-parameters" in tags[at + 1] and out.cells[at + 1].source.endswith("STEPS = 3\n")
  assert len(execute.with_parameters(out, {"STEPS": 4}).cells) == len(out.cells)  # replaced, not stacked
  with pytest.raises(ValueError, match=r"parameters \['STEP'\] are not in the notebook's parameters cell; "
                                       r"valid: \['BATCH_SIZE', 'EVAL_EXAMPLES', 'STEPS', 'WORKDIR'\]"):
    execute.with_parameters(nb, {"STEP": 3})
