"""`python -m vljax.data.convert` (tar shards / JSONL folder -> ArrayRecord) and the input benchmark."""

import os
import subprocess
import sys

import grain
import numpy as np
import pytest

from real_data import shapes_pairs, write_folder, write_tar_shards
from vljax.data import convert, pipeline
from vljax.data.sources import records
from vljax.data.tokenizers import ShapesTokenizer

TOK = ShapesTokenizer()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def pairs():
  return shapes_pairs(20, image_size=40)


def _read_back(directory, size=40):
  cfg = dict(name="array_record", path=str(directory), image_size=size, max_len=pipeline.DEFAULT_MAX_LEN)
  out = []
  for b in pipeline.make_eval_dataset(cfg, TOK, global_batch_size=8):
    out.extend(zip(TOK.decode(b["text"]), b["image"]))
  return out


def test_tar_shards_round_trip_with_bad_samples_counted(tmp_path, pairs, capsys):
  samples = [dict(p) for p in pairs]
  samples.insert(3, dict(image=b"\x89PNG broken", caption="a red circle"))
  samples.insert(7, dict(image=pairs[0]["image"], caption=""))
  samples.insert(9, dict(image=None, caption="no image here"))
  write_tar_shards(tmp_path / "in", samples, per_shard=6, fmt="PNG")
  assert convert.main(["--input", str(tmp_path / "in" / "shard-{00000..00003}.tar"), "--output",
                       str(tmp_path / "out"), "--records_per_file", "8", "--no_progress"]) == 0
  printed = capsys.readouterr().out
  assert "written: 20 records in 3 file(s)" in printed
  assert "skipped: 3" in printed and "corrupt_image: 1" in printed and "empty_caption: 1" in printed
  assert "missing_image: 1" in printed
  read = _read_back(tmp_path / "out")
  assert [c for c, _ in read] == [p["caption"] for p in pairs]
  for (_, image), p in zip(read, pairs):
    np.testing.assert_array_equal(image, pipeline.preprocess_images(p["image"]))  # PNG bytes kept as they were
  raw = grain.sources.ArrayRecordDataSource([str(tmp_path / "out" / "data-00000.array_record")])[0]
  record = records.decode_record(raw)  # the documented format: a msgpack map
  assert set(record) == {"key", "image", "caption"} and record["image"].startswith(b"\x89PNG")
  # A second run into the same directory would mix old and new records.
  with pytest.raises(FileExistsError, match="already holds 3"):
    convert.convert(str(tmp_path / "in"), str(tmp_path / "out"))


def test_jsonl_folder_with_caption_lists(tmp_path, pairs):
  samples = [dict(image=p["image"], caption=[p["caption"], "a second caption"]) for p in pairs[:6]]
  samples[2] = dict(samples[2], image=None)  # listed, not on disk
  index = write_folder(tmp_path / "in", samples, fmt="PNG")
  written, skipped, paths = convert.convert(index, str(tmp_path / "out"), progress=False)
  assert (written, skipped, len(paths)) == (5, {"missing_image": 1}, 1)
  source = records.ArrayRecordSource(str(tmp_path / "out"))
  assert source[0]["caption"] == [pairs[0]["caption"], "a second caption"]
  assert source[2]["key"] == "images/000003.png"


def test_nothing_usable_is_an_error(tmp_path):
  write_tar_shards(tmp_path / "in", [dict(image=b"junk", caption="x")] * 3, per_shard=3)
  with pytest.raises(ValueError, match="no usable sample.*corrupt_image"):
    convert.convert(str(tmp_path / "in"), str(tmp_path / "out"), progress=False)
  with pytest.raises(FileNotFoundError, match="matches no file"):
    convert.convert(str(tmp_path / "in" / "*.nothing"), str(tmp_path / "out2"), progress=False)


def test_command_line_help_and_errors(tmp_path):
  run = lambda *a: subprocess.run([sys.executable, "-m", "vljax.data.convert", *a], capture_output=True,  # noqa: E731
                                  text=True, cwd=ROOT)
  done = run("--help")
  assert done.returncode == 0 and "--records_per_file" in done.stdout and "ArrayRecord" in done.stdout
  done = run("--input", str(tmp_path / "missing-*.tar"), "--output", str(tmp_path / "out"))
  assert done.returncode == 2 and "missing-*.tar" in done.stderr


def test_input_benchmark_runs_and_reports(tmp_path, capsys):
  from vljax.bench import input as bench_input

  result = bench_input.main(["--image_size", "32", "--workers", "0", "--batch_size", "8", "--batches", "2",
                             "--warmup", "1", "--num_images", "16", "--width", "100", "--height", "75",
                             "--json_out", str(tmp_path / "r.json")])
  printed = capsys.readouterr().out
  assert "| resize on host, pil: array_record, 0 workers |" in printed and "json: {" in printed
  assert "CPU cores" in printed
  paths = [r["path"].rsplit(",", 1)[0] if "workers" in r["path"] else r["path"] for r in result["rows"]]
  assert paths == [f"resize on {mode}, {decoder}: {where}" for mode in ("host", "device")
                   for decoder in ("pil", "simplejpeg")
                   for where in ("1 process, no grain", "array_record", "webdataset", "folder")]
  # CPU time comes in clock ticks (10 ms): a run this small may read 0
  assert all(r["images_per_sec"] > 0 and r["cores_for_demand"] >= 0 for r in result["rows"])
  assert result["stage_ms_per_image"]["decode (PIL)"] > 0 and "| crop for the device |" in printed
  assert os.path.exists(tmp_path / "r.json")
  with pytest.raises(SystemExit):
    bench_input.main(["--resize", "gpu"])
  assert "--resize: unknown ['gpu']; valid: ['host', 'device']" in capsys.readouterr().err
