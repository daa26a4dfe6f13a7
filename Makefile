# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/demo
CONFIG ?= configs/clip_shapes.py

.PHONY: demo test test-isa isa-table notebooks install install-test clean

# Python caches the bytecode it compiles in __pycache__ unless PYTHONDONTWRITEBYTECODE is set; where
# an environment sets it, every process would compile jax, flax and the rest again from source (5 s of
# each training process's start here, and the tests start dozens). The venv is the project's own,
# so its commands keep the cache.
unexport PYTHONDONTWRITEBYTECODE

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# --no-compile: pip would byte-compile every installed module (torch, transformers, tensorflow-datasets:
# half the install's time); Python compiles the ones a run imports, once, on first import.
$(VENV)/.installed: requirements.txt pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q --no-compile -r requirements.txt -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed

demo: install
	$(PY) -m vljax.train --config $(CONFIG) --workdir $(WORKDIR)
	$(PY) -m vljax.report --workdir $(WORKDIR)

# XLA's CPU buffers come from malloc; glibc returns large ones to the kernel on free, so every
# step faults its temporaries in again. Huge pages for malloc (glibc >= 2.35; ignored elsewhere)
# make the suite's many small trainings faster (numbers unchanged). vljax's own commands set this
# themselves (vljax/allocator.py); pytest is not one of them.
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

# --dist loadfile: each test file in one worker, so a module's fixtures (a trained workdir, a
# torch reference model) are built once, not once per worker.
test: install-test
	$(PY) -m pytest -n 2 --dist loadfile -q --durations=15

# The tests that compare floats of two code paths, under another x86 instruction set than this
# CPU's (XLA emits other code per ISA; tests/numerics.py): what CI runs after `make test`. The slow
# ones (weight imports against torch, decoder-model layouts, two processes, whole train steps of
# composite objectives, legacy trajectories, second variants of one check) keep bounds that faster ones
# check here too; `make isa-table` runs every one under every instruction set.
ISA ?= SSE4_2
ISA_TESTS ?= cross_path and not slow
# The files whose tolerances use the largest share of themselves on some ISA (`make isa-table`:
# objectives 0.45, gradcache 0.39, distributed 0.21, models 0.18). The others keep 8x or more on
# every ISA measured; `make test-isa ISA_FILES=` reruns them all.
ISA_FILES ?= tests/test_objectives.py tests/test_gradcache.py tests/test_distributed_train.py tests/test_models.py
test-isa: install-test
	XLA_FLAGS="$(XLA_FLAGS) --xla_cpu_max_isa=$(ISA)" $(PY) -m pytest -m "$(ISA_TESTS)" -n 2 --dist loadfile -q -p no:cacheprovider $(ISA_FILES)

# Their worst errors against their tolerances under SSE4_2, AVX, AVX2 and this CPU's default.
isa-table: install-test
	$(PY) tests/isa_sweep.py

# Every notebook run top to bottom at its own parameters, outputs saved in place (minutes each; README).
# The image-conditioned LMs first: blip2_and_imports reuses the CLIP and LM runs it trains.
NOTEBOOKS := notebooks/image_lms_shapes.ipynb $(filter-out notebooks/image_lms_shapes.ipynb,$(sort $(wildcard notebooks/*.ipynb)))
notebooks: install-test
	$(PY) notebooks/execute.py $(NOTEBOOKS)

clean:
	rm -rf $(VENV) runs
