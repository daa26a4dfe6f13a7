"""vljax: vision-language pretraining in JAX/Flax."""

from vljax.allocator import reexec_with_huge_pages
from vljax.xla_cpu import set_for_commands as _cpu_compiler_settings

__version__ = "0.1.0"

reexec_with_huge_pages()  # `python -m vljax.train` etc.: before JAX loads (vljax/allocator.py)
_cpu_compiler_settings()  # the same commands, before JAX reads XLA_FLAGS (vljax/xla_cpu.py)


def load(workdir: str, step: int | None = None):
  """The model trained in `workdir`, ready for inference (see vljax.inference.Predictor)."""
  from vljax.inference import load as _load  # importing vljax stays free of JAX start-up
  return _load(workdir, step)
