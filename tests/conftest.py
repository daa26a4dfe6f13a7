"""Eight simulated CPU devices for every test, set before JAX touches a backend; one XLA
compilation cache per test run; how the run compiles (`VLJAX_TEST_COMPILE`); the error log of
`cross_path` tests (tests/numerics.py); the recipes' presets importable as `common`
(configs/common.py)."""

import gc
import os
import shutil
import signal
import sys
import tempfile

import numpy as np

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))

import common  # noqa: E402
from vljax import config as config_lib  # noqa: E402
from numerics import ErrorRecorder  # noqa: E402

_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_OWN_CACHE = []


def pytest_configure(config):
  """Tracing makes many short-lived Python objects: with what the imports made frozen out of the
  collector's way and a larger first generation, the collector costs less (4-5% of a test file's
  CPU time here)."""
  gc.collect()
  gc.freeze()
  gc.set_threshold(100_000, 50, 100)
  _compilation_cache(config)
  _compile_mode()


def _compilation_cache(config):
  """The suite compiles the same tiny programs many times (in xdist workers, and in the training
  runs and processes tests start), so compiling dominates its time: a compilation cache shared by
  all of them, every entry kept, nearly halves it. A fresh directory per run, removed at the end:
  nothing compiled for one CPU or jaxlib is ever loaded by another run. Workers and subprocesses
  inherit the environment."""
  if not hasattr(config, "workerinput") and _CACHE_ENV not in os.environ:
    _OWN_CACHE.append(tempfile.mkdtemp(prefix="vljax-test-xla-cache-"))
    os.environ[_CACHE_ENV] = _OWN_CACHE[0]
  if os.environ.get(_CACHE_ENV):
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # keep every program
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    # This process imported jax before the variables were set.
    jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                      int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))


# How the suite compiles: "fast" (the default) turns off LLVM's optimisations of the machine code
# (`jax_disable_most_optimizations`). XLA's HLO passes still run as in users' runs, and they decide
# what the tests check: fusion and partitioning (the order floats are added in), layouts, buffer
# assignment (compiled memory) and cost analysis (FLOPs). Only the machine code below them differs,
# as it does on another CPU, which the `cross_path` tolerances must absorb anyway (`make test-isa`).
# "full" compiles exactly as users' runs do: `make isa-table` uses it for its table of errors per
# instruction set.
COMPILE_ENV = "VLJAX_TEST_COMPILE"
COMPILE_MODES = ("fast", "full")


def _compile_mode() -> None:
  """Set once per process before anything compiles; workers and the processes tests start inherit
  the environment, so they compile the same way (and share the cache's entries)."""
  mode = os.environ.get(COMPILE_ENV, "fast")
  if mode not in COMPILE_MODES:
    raise pytest.UsageError(f"{COMPILE_ENV}={mode!r}: must be one of {', '.join(COMPILE_MODES)}")
  fast = mode == "fast"
  if fast:
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
  else:
    os.environ.pop("JAX_DISABLE_MOST_OPTIMIZATIONS", None)
  jax.config.update("jax_disable_most_optimizations", fast)  # jax was imported before the variable was set


# The longest files (over a minute each on a 2-core CPU), queued first: `pytest -n 2 --dist loadfile`
# hands files out in collection order, and one of these started last would run alone at the end.
LONGEST_FIRST = ("test_notebooks.py", "test_distributed_train.py", "test_multiprocess.py", "test_generative.py",
                 "test_composable.py")


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order


def pytest_unconfigure(config):
  for path in _OWN_CACHE:
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _record_cross_path_errors(request, monkeypatch):
  """With VLJAX_NUMERICS_LOG set, a `cross_path` test appends its worst float error and its
  tolerances to that file (what tests/isa_sweep.py tabulates per instruction set)."""
  log = os.environ.get("VLJAX_NUMERICS_LOG")
  if not log or request.node.get_closest_marker("cross_path") is None:
    yield
    return
  recorder = ErrorRecorder(request.node.nodeid)
  recorder.install(monkeypatch)
  yield
  recorder.append_to(log)


def workdir_listing(path):
  """Everything under `path` (None when it does not exist): relative path, kind, size, mtime. Equal
  before and after a failed run means the run left the workdir exactly as it was."""
  if not os.path.exists(path):
    return None
  out = [(".", "dir", 0, os.stat(path).st_mtime_ns)]
  for root, dirs, files in os.walk(path):
    for name in dirs + files:
      full = os.path.join(root, name)
      st = os.stat(full)
      out.append((os.path.relpath(full, path), "dir" if name in dirs else "file", st.st_size, st.st_mtime_ns))
  return sorted(out)


def tiny_config(**overrides):
  """A CLIP recipe small enough to compile and train in seconds on CPU (top-level overrides)."""
  c = config_lib.base_config()
  c.model = dict(name="composable", image=dict(variant="mu/8", depth=1, pool="gap", posemb="sincos2d"),
                 text=dict(variant="mu", depth=1, causal=False, pool="last"),
                 contrastive=dict(embed_dim=16, logit_scale_init=10.0))
  c.data.image_size = 32
  c.data.max_len = 12
  c.data.num_threads = 1
  c.batch_size = 16
  c.total_steps = 6
  c.optimizer.lr = 3e-3
  c.schedule.warmup_steps = 2
  c.evals = common.shapes_evals(every=3, zeroshot=dict(num_examples=32),
                                retrieval=dict(num_examples=32), binding=dict(num_examples=32))
  c.eval_batch_size = 32
  c.checkpoint = dict(every=3, keep=2, async_save=True)
  c.log_every = 1
  c.progress_bar = False
  if "evals" in overrides:  # update() would merge into the default evaluators, not replace them
    c.evals = overrides.pop("evals")
  c.update(overrides)
  return c



def greedy_by_recompute(model, params, images, ids, lengths, steps, tokenizer):
  """Each prompt continued `steps` tokens by rerunning the full teacher-forced decoder: the
  reference a KV-cached generation must equal. Every pass is padded to one length (the decoder is
  causal: what follows a position cannot change its logits), so the pass compiles once."""
  import jax
  import jax.numpy as jnp

  memory = model.apply({"params": params}, images, method="encode_image")["memory"]
  logits_of = jax.jit(lambda p, mem, seq: model.apply({"params": p}, mem, seq, method="caption_logits"))
  width = max(lengths) + steps
  out = []
  for b, n in enumerate(lengths):
    seq = [int(i) for i in ids[b, :n]]
    for _ in range(steps):
      padded = np.zeros((1, width), np.int32)
      padded[0, :len(seq)] = seq
      logits = logits_of(params, memory[b:b + 1], jnp.asarray(padded))
      seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
    out.append(tokenizer.decode([seq[n:]])[0])
  return out


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory):
  """A small random Hugging Face CLIP, saved, with its reference outputs (tests/hf_reference.py)."""
  return _reference_family("clip", tmp_path_factory)


@pytest.fixture(scope="module")
def small_siglip(tmp_path_factory):
  """A small random Hugging Face SigLIP, saved, with its reference outputs (tests/hf_reference.py)."""
  return _reference_family("siglip", tmp_path_factory)


def _reference_family(kind: str, tmp_path_factory) -> dict:
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  from hf_reference import reference_family  # torch and transformers: only where these fixtures are used

  return reference_family(kind, True, tmp_path_factory.mktemp(f"small_{kind}"))


def train_on_one_device(cfg, parts, local_batch: dict, steps: int) -> list[dict]:
  """The metrics of `steps` train steps on `local_batch`, again and again, from a fresh state on one
  CPU device (the jitted step the trainer runs)."""
  from vljax.parallel.mesh import make_mesh
  from vljax.train import state as state_lib, step as step_lib
  from vljax.train.trainer import _global_batch

  mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    state, shardings = state_lib.create_train_state(parts.model, parts.tx, cfg, mesh, state_lib.dummy_inputs(cfg, 1))
    train_step = step_lib.make_train_step(parts.model, parts.tx, cfg, parts.schedule, mesh, shardings)
    history = []
    for _ in range(steps):
      state, metrics = train_step(state, _global_batch(local_batch, mesh))
      history.append(metrics)
  return history


def checkpointed_state(workdir: str, step: int) -> dict:
  """The train state a run's checkpoint at `step` holds, as a dict of numpy arrays."""
  import orbax.checkpoint as ocp
  from vljax import checkpoint_io

  manager = ocp.CheckpointManager(checkpoint_io.checkpoint_dir(workdir), item_names=("state", "data", "meta"),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore()))["state"]
  manager.close()
  return jax.tree.map(np.asarray, state)


def sigterm_after_logging(monkeypatch, step: int) -> None:
  """The trainer gets SIGTERM once it has logged step `step`'s train metrics (a preemption there: it
  saves and stops at the next step); monkeypatch.undo() ends it."""
  from vljax import metrics as metrics_lib

  write = metrics_lib.MetricWriter.write

  def write_then_preempt(self, at, row):
    write(self, at, row)
    if at == step and "train/loss" in row:
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(metrics_lib.MetricWriter, "write", write_then_preempt)
