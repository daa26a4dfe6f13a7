"""vljax: vision-language pretraining in JAX/Flax."""

__version__ = "0.1.0"


def load(workdir: str, step: int | None = None):
  """The model trained in `workdir`, ready for inference (see vljax.inference.Predictor)."""
  from vljax.inference import load as _load  # importing vljax stays free of JAX start-up
  return _load(workdir, step)
