"""Workdirs on object stores (gs://...): no appends, no local absolute paths.

etils' mock backend maps gs:// paths onto the local disk (under the test's cwd); its `open`
here refuses append mode, as GCS does, so an append would fail the test.
"""

import json

import numpy as np
import pytest
import tensorboardX
from etils import epath
from etils.epath import testing as epath_testing

from vljax import checkpoint_io
from vljax import metrics as metrics_lib
from vljax import report

WORKDIR = "gs://bucket/runs/clip"


class _NullSummaryWriter:
  def __init__(self, *args, **kwargs):
    pass

  add_scalar = flush = close = lambda self, *a, **k: None


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  def no_append(original_open, path, mode="r", **kwargs):
    if "a" in mode:
      raise OSError(f"object stores cannot append: {path} opened with mode {mode!r}")
    return original_open(path, mode, **kwargs)

  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(tensorboardX, "SummaryWriter", _NullSummaryWriter)  # its gs:// path needs GCS
  with epath_testing.mock_epath(open=no_append):
    yield


def test_metrics_on_object_store_rewrite_whole_file_and_keep_earlier_lines(fake_gcs):
  writer = metrics_lib.MetricWriter(WORKDIR, enabled=True)
  assert writer.rewrite
  writer.write(1, {"train/loss": 2.0})
  writer.write(2, {"train/loss": 1.5})
  writer.close()
  resumed = metrics_lib.MetricWriter(WORKDIR, enabled=True)  # a resumed run keeps what was written
  resumed.write(2, {"train/loss": 1.25})
  resumed.write(3, {"train/loss": 1.0})
  resumed.close()
  assert metrics_lib.read_metrics(WORKDIR)["train/loss"] == {1: 2.0, 2: 1.25, 3: 1.0}


def test_object_store_writer_writes_the_same_file_as_appending(tmp_path):
  texts = []
  for rewrite in (False, True):
    workdir = tmp_path / str(rewrite)
    writer = metrics_lib.MetricWriter(str(workdir), enabled=True, rewrite=rewrite, object_store_flush_secs=1e9)
    for step in range(5):
      writer.write(step, {"train/loss": 1.0 / (step + 1), "train/lr": np.float32(step)})
    writer.close()
    texts.append((workdir / "metrics.jsonl").read_text())
  assert texts[0] == texts[1] and texts[0].count("\n") == 5


def test_workdir_files_and_report_on_object_store(fake_gcs):
  metrics_lib.write_text(WORKDIR, "config.json", json.dumps({"seed": 0}))
  assert json.loads((epath.Path(WORKDIR) / "config.json").read_text()) == {"seed": 0}
  writer = metrics_lib.MetricWriter(WORKDIR, enabled=True)
  writer.write(10, {"train/loss": 1.0, "eval/zeroshot/top1": 0.5})
  writer.close()
  report.plot_curves(metrics_lib.read_metrics(WORKDIR), f"{WORKDIR}/curves.png")
  assert (epath.Path(WORKDIR) / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoint_dir_stays_a_bucket_path(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert checkpoint_io.checkpoint_dir(WORKDIR) == f"{WORKDIR}/checkpoints"
  assert checkpoint_io.checkpoint_dir("runs/a") == str(tmp_path / "runs/a/checkpoints")
