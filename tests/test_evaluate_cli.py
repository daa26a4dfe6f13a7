"""`python -m vljax.evaluate` (vljax/evaluate.py): evaluates a trained workdir's checkpoint without
training, appends to its metrics.jsonl at the step evaluated, and fails on bad input before computing
or writing anything."""

import json

import pytest

from conftest import tiny_config, workdir_listing
from random_workdirs import write_random_workdir
from vljax import evaluate
from vljax.train.trainer import train_and_evaluate

FEWSHOT = ["--config.evals.fewshot.shots=(1, 5)", "--config.evals.fewshot.num_draws=2",
           "--config.evals.fewshot.num_examples=72", "--config.evals.fewshot.num_pool=128"]


def _train(path):
  cfg = tiny_config(evals=dict(zeroshot=dict(every=0, num_examples=16)), total_steps=2,
                    checkpoint=dict(every=1, keep=3, async_save=False))
  train_and_evaluate(cfg, str(path))
  return str(path)


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
  return _train(tmp_path_factory.mktemp("runs") / "clip")


def _rows(workdir):
  with open(f"{workdir}/metrics.jsonl") as f:
    return [json.loads(line) for line in f]


def test_evaluates_the_latest_or_a_given_step_and_appends(clip_run, capsys):
  before = open(f"{clip_run}/metrics.jsonl").read()
  assert evaluate.main(["--workdir", clip_run, "--evals", "fewshot,retrieval,zeroshot", *FEWSHOT,
                        "--config.evals.retrieval.num_examples=16"]) == 0
  printed = json.loads(capsys.readouterr().out)
  after = open(f"{clip_run}/metrics.jsonl").read()
  assert after.startswith(before)  # appended; nothing already written changed
  row = _rows(clip_run)[-1]
  assert row == printed and row["step"] == 2
  for key in ("eval/fewshot/color_5shot", "eval/fewshot/count_1shot_std", "eval/retrieval/i2t_mrr",
              "eval/retrieval/t2i_map", "eval/zeroshot/top1"):
    assert 0.0 <= row[key] <= 1.0, key
  # zeroshot kept the run's own settings (num_examples=16): the same value the trainer logged at step 2.
  trained = [r for r in _rows(clip_run)[:-1] if "eval/zeroshot/top1" in r][-1]
  assert trained["step"] == 2 and trained["eval/zeroshot/top1"] == pytest.approx(row["eval/zeroshot/top1"])
  assert evaluate.main(["--workdir", clip_run, "--evals", "fewshot", "--step", "1", *FEWSHOT]) == 0
  assert _rows(clip_run)[-1]["step"] == 1


@pytest.mark.parametrize("args, match", [
    (["--evals", "fewshot,nope"], r"unknown evaluator 'nope'; valid: \[.*'fewshot'"),
    (["--evals", "caption"], r"evals.caption \(captioning\) needs caption generation from an image; "
                             r"model 'composable' has"),
    (["--evals", "fewshot", "--step", "7"], r"--step 7: .* has no checkpoint at that step; valid: \[1, 2\]"),
    (["--evals", "fewshot", "--config.evals.fewshot.bogus=1"], r"evals.fewshot: unknown key\(s\) \['bogus'\]"),
    (["--evals", "fewshot", "--config.evals.retrieval.num_examples=4"],
     r"--config.evals.retrieval.\* sets an evaluator not in --evals; valid: \['fewshot'\]"),
    (["--evals", "fewshot", "--config.model.name=cappa"], r"'--config.model.name=cappa' is not understood"),
])
def test_bad_input_fails_first_and_touches_nothing(clip_run, capsys, args, match):
  listing = workdir_listing(clip_run)
  assert evaluate.main(["--workdir", clip_run, *args]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and __import__("re").search(match, err), err
  assert workdir_listing(clip_run) == listing


def test_a_workdir_without_checkpoints(tmp_path, clip_run, capsys):
  (tmp_path / "config.json").write_text(open(f"{clip_run}/config.json").read())
  assert evaluate.main(["--workdir", str(tmp_path), "--evals", "fewshot"]) == 2
  assert "has no finished checkpoint" in capsys.readouterr().err
  assert evaluate.main(["--workdir", str(tmp_path / "missing"), "--evals", "fewshot"]) == 2
  assert "is 'missing' a vljax workdir" in capsys.readouterr().err.replace(str(tmp_path) + "/", "")


def test_a_captioner_gets_a_probe(tmp_path):
  cfg = tiny_config(evals={})
  cfg.model = dict(name="cappa", image=dict(variant="mu/8", posemb="sincos2d"), text=dict(variant="mu", max_len=24))
  cfg.objectives, cfg.data.max_len = {"captioning": 1.0}, 24
  run = write_random_workdir(str(tmp_path / "cappa"), cfg)  # the probe reads features: any weights do
  step, out = evaluate.evaluate(run, ["fewshot"], {"fewshot": dict(shots=(1, 5), num_draws=2, num_examples=72,
                                                                    num_pool=128, tasks=["color", "count"])})
  assert step == 0 and set(out) == {f"eval/fewshot/{t}_{k}shot{s}" for t in ("color", "count") for k in (1, 5)
                                    for s in ("", "_std")}
