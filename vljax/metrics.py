"""Metric writers (metrics.jsonl + tensorboard) and MFU accounting."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping

import jax
import numpy as np
from etils import epath

# bf16 dense peak FLOP/s per device, matched as a substring of jax's device_kind (longest name
# first: "NVIDIA H100 PCIe" before "H100"; JAX calls v5e "TPU v5 lite", v5p "TPU v5", v6e "TPU v6
# lite"). MFU is logged only where the device is known. SXM parts are the H100/H200 defaults; the
# PCIe and NVL cards run lower clocks.
PEAK_FLOPS = {
    "H100": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "H200": 989e12, "H200 NVL": 835e12,
    "A100": 312e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


def device_peak_flops(device=None) -> float | None:
  """The device's bf16 dense peak, matched on its device_kind; None if unknown (e.g. CPU)."""
  kind = (device or jax.devices()[0]).device_kind
  for name in sorted(PEAK_FLOPS, key=len, reverse=True):
    if name.lower() in kind.lower():
      return PEAK_FLOPS[name]
  return None


def is_object_store(path: str | os.PathLike) -> bool:
  """gs://, s3://, ...: no appends, no local absolute paths."""
  return "://" in os.fspath(path)


def _summary_writer_class():
  """tensorboardX's SummaryWriter (it writes gs:// itself, through google-cloud-storage). tensorboardX
  imports torch where it is installed, only to accept torch tensors: 4 s of every run's start on a
  2-core CPU. vljax logs floats, so torch stays hidden from that import unless it is loaded already."""
  if "torch" in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX expects
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules["torch"]
  return SummaryWriter


class MetricWriter:
  """Appends `{"step": int, key: float, ...}` lines to metrics.jsonl and tensorboard scalars.

  Only process 0 writes. The file is append-only: a resumed run re-logs the steps after its
  checkpoint, and readers keep the last value per (step, key) (see `read_metrics`). Object
  stores (gs://...) cannot append, so there the writer keeps the file's lines and rewrites the
  whole object at most every `object_store_flush_secs` and at close; nothing already written
  is dropped, and a preempted run loses at most that many seconds of lines.
  """

  def __init__(self, workdir: str, *, enabled: bool | None = None, rewrite: bool | None = None,
               object_store_flush_secs: float = 30.0):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.rewrite = is_object_store(workdir) if rewrite is None else rewrite
    self._flush_secs, self._last_flush = object_store_flush_secs, 0.0
    self._tb = self._file = None
    self._lines: list[str] = []
    if self.enabled:
      self._path = epath.Path(workdir) / "metrics.jsonl"
      self._path.parent.mkdir(parents=True, exist_ok=True)
      if self.rewrite:
        self._lines = self._path.read_text().splitlines(keepends=True) if self._path.exists() else []
      else:
        self._file = open(self._path, "a")
      self._tb = _summary_writer_class()(os.fspath(epath.Path(workdir) / "tb"))

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    scalars = {k: float(np.asarray(v)) for k, v in metrics.items()}
    line = json.dumps({"step": int(step), **scalars}) + "\n"
    if self.rewrite:
      self._lines.append(line)
      self._flush_object(force=False)
    else:
      self._file.write(line)
      self._file.flush()
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, int(step))
    self._tb.flush()

  def _flush_object(self, force: bool) -> None:
    if force or time.monotonic() - self._last_flush >= self._flush_secs:
      self._path.write_text("".join(self._lines))
      self._last_flush = time.monotonic()

  def close(self) -> None:
    if self.enabled:
      if self.rewrite:
        self._flush_object(force=True)
      else:
        self._file.close()
      self._tb.close()


def write_text(workdir: str, name: str, text: str) -> str:
  """Write workdir/name whole (local or object store, e.g. gs://); returns its path."""
  path = epath.Path(workdir) / name
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  return os.fspath(path)


def read_metrics(workdir: str) -> dict[str, dict[int, float]]:
  """key -> {step: value}, the last logged value winning (resumed runs re-log steps)."""
  out: dict[str, dict[int, float]] = {}
  path = epath.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return out
  for line in path.read_text().splitlines():
    if line.strip():
      row = json.loads(line)
      step = row.pop("step")
      for k, v in row.items():
        out.setdefault(k, {})[step] = v
  return out


def throughput_metrics(*, steps: int, seconds: float, global_batch: int, flops_per_step: float | None,
                       num_devices: int, peak_flops: float | None) -> dict[str, float]:
  """examples/s, step time, achieved model TFLOP/s per device (where the model has a FLOP count) and
  MFU (where the peak is known too)."""
  step_time = seconds / max(steps, 1)
  m = {"step_time": step_time, "examples_per_sec": global_batch / step_time}
  if flops_per_step:
    per_device = flops_per_step / step_time / num_devices
    m["model_tflops_per_sec_per_device"] = per_device / 1e12
    if peak_flops:
      m["mfu"] = per_device / peak_flops
  return m
