"""Every notebook runs top to bottom in a Jupyter kernel (nbclient, notebooks/execute.py), its
parameters cell overridden to a few steps on small evaluation sets; an error in any cell fails."""

import glob
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "notebooks"))

import execute  # noqa: E402  (notebooks/execute.py)

# The image-conditioned LMs first, as `make notebooks` runs them: BLIP-2's notebook chains from their CLIP and LM.
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")), key=lambda p: ("image_lms" not in p, p))
# What CI runs of each notebook: the same cells, at these parameters.
QUICK = {"clip_shapes.ipynb": dict(STEPS=3, BATCH_SIZE=32, EVAL_EXAMPLES=64),
         "generative_shapes.ipynb": dict(STEPS=3, BATCH_SIZE=32, EVAL_EXAMPLES=32, DECODE_TOKENS=8),
         "image_lms_shapes.ipynb": dict(PRETRAIN_STEPS=2, STEPS=2, BATCH_SIZE=8, EVAL_EXAMPLES=4, SHOTS=(0,)),
         "blip_shapes.ipynb": dict(STEPS=2, BATCH_SIZE=16, EVAL_EXAMPLES=8, NUM_IMAGES=12, NOISE=0.5),
         "compare_shapes.ipynb": dict(ARMS=("clip", "siglip"), SEEDS=1, STEPS=2, BATCH_SIZE=16, EVAL_EXAMPLES=16,
                                      EVAL_POINTS=1),
         "blip2_and_imports.ipynb": dict(PRETRAIN_STEPS=2, STEPS=2, BATCH_SIZE=8, EVAL_EXAMPLES=8)}
# Parameters naming another notebook's WORKDIR in this session (its runs reused where that one ran first).
CHAINED = {"blip2_and_imports.ipynb": {"PARTS_FROM": "image_lms_shapes.ipynb"}}
# Text each notebook's outputs must hold (printed, or a displayed table): what its last steps produce.
EXPECTED = {"clip_shapes.ipynb": "eval/zeroshot/top1",
            "generative_shapes.ipynb": "eval/zeroshot/top1",
            "image_lms_shapes.ipynb": "Flamingo VQA accuracy by shots",
            "blip_shapes.ipynb": "kept pairs under",
            "compare_shapes.ipynb": "## Ranking",
            "blip2_and_imports.ipynb": "the same continuations"}
# XLA's quickest compiles (the programs run a few steps here) and one compilation cache for the
# session: a notebook that compiles a program twice (two stages of one model, a run and its predictor) pays once.
QUICK_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


@pytest.fixture(scope="session")
def compilation_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("xla_cache"))


@pytest.fixture(scope="session")
def workdirs(tmp_path_factory):
  return tmp_path_factory.mktemp("notebook_runs")


def _text(output) -> str:
  data = output.get("data", {})
  return output.get("text", "") + data.get("text/plain", "") + data.get("text/markdown", "")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, workdirs, monkeypatch, compilation_cache):
  monkeypatch.setenv("XLA_FLAGS", QUICK_XLA_FLAGS)  # replaces any of CI's: the kernel runs at this CPU's own instruction set
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", compilation_cache)
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  name = os.path.basename(path)
  assert name in QUICK and name in EXPECTED, f"{name}: give its quick parameters in QUICK, its output in EXPECTED"
  chained = {k: str(workdirs / other) for k, other in CHAINED.get(name, {}).items()}
  nb = execute.execute(path, dict(QUICK[name], WORKDIR=str(workdirs / name), **chained), timeout=600)
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert EXPECTED[name] in "".join(map(_text, outputs))
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) >= 2  # e.g. the world's examples and a loss curve; answers, ITM scores, the report's plots


def test_parameters_are_injected_after_the_parameters_cell_and_checked():
  import nbformat
  nb = nbformat.read(os.path.join(ROOT, "notebooks", "clip_shapes.ipynb"), as_version=4)
  out = execute.with_parameters(nb, {"STEPS": 3})
  tags = [c.metadata.get("tags", []) for c in out.cells]
  at = next(i for i, t in enumerate(tags) if "parameters" in t)
  assert "injected-parameters" in tags[at + 1] and out.cells[at + 1].source.endswith("STEPS = 3\n")
  assert len(execute.with_parameters(out, {"STEPS": 4}).cells) == len(out.cells)  # replaced, not stacked
  with pytest.raises(ValueError, match=r"parameters \['STEP'\] are not in the notebook's parameters cell; "
                                       r"valid: \['BATCH_SIZE', 'EVAL_EXAMPLES', 'STEPS', 'WORKDIR'\]"):
    execute.with_parameters(nb, {"STEP": 3})
