"""Suite options beyond matched FLOPs: budget match="seconds" (equal wall time: every arm's step
compiled and timed, arms interleaved; the times kept in suite.json and reused by reruns, so a rerun
trains the very same steps), and evaluators some arms only run (`arms=`: a head the others lack)."""

import os
import re

import pytest

from vljax.compare import __main__ as compare
from vljax.compare import record, resolve, timing
from vljax.compare import suite as suite_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "compare", "tiny.py")


def suite_file(tmp_path, *edits, name="suite.py"):
  """configs/compare/tiny.py with edits (old, new) applied."""
  source = open(TINY).read()
  for old, new in edits:
    assert old in source, old
    source = source.replace(old, new)
  path = tmp_path / name
  path.write_text(source)
  return str(path)


SECONDS = ('match="flops"', 'match="seconds", timing=dict(rounds=2, steps=1, warmup=1)')
HALF_BATCH = ('("data.caption_noise", 0.5)', '("data.caption_noise", 0.5), ("batch_size", 8)')


def test_steps_follow_the_measured_step_times(tmp_path, capsys):
  path = suite_file(tmp_path, SECONDS, HALF_BATCH)
  fresh = str(tmp_path / "new")
  assert compare.main(["--suite", path, "--workdir", fresh, "--dry_run"]) == 0
  out = capsys.readouterr().out
  assert not os.path.exists(fresh)
  assert re.search(r"budget match='seconds': arm 'clip_noisy': [0-9.]+ s/step \(median per round: [0-9.]+, "
                   r"[0-9.]+\)", out), out
  header = next(line for line in out.splitlines() if line.startswith("arm "))
  assert header.split()[:5] == ["arm", "seeds", "steps", "examples", "s/step"]
  clip, noisy = (line.split() for line in out.splitlines() if line.startswith(("clip ", "clip_noisy ")))
  assert clip[2] == "4"  # the budget is clip's own 4 steps
  # The table's times have 3 decimals, the matching used the full ones (exactly: the next test).
  assert abs(int(noisy[2]) - 4 * float(clip[4]) / float(noisy[4])) <= 1.5


def test_a_rerun_reuses_the_recorded_times_and_trains_the_same_steps(tmp_path, monkeypatch):
  measured = []

  def fake(configs, rounds, steps, warmup, log=print):
    measured.append((list(configs), rounds, steps, warmup))
    return {"clip": 0.2, "clip_noisy": 0.05}

  monkeypatch.setattr(timing, "measure_seconds_per_step", fake)
  path = suite_file(tmp_path, SECONDS)
  first = resolve.resolve(path, build_evaluators=False)
  assert measured == [(["clip", "clip_noisy"], 2, 1, 1)]
  assert {a: arm.total_steps for a, arm in first.arms.items()} == {"clip": 4, "clip_noisy": 16}
  rec = first.record()
  assert rec["arms"]["clip_noisy"]["seconds_per_step"] == 0.05
  workdir = str(tmp_path / "cmp")
  record.write(workdir, rec)
  again = resolve.resolve(path, build_evaluators=False, workdir=workdir)
  assert len(measured) == 1 and again.record() == rec
  assert record.check(workdir, again.record())
  # Another ranking reuses them too; another definition of the runs measures again.
  ranked = suite_file(tmp_path, SECONDS, ('"eval/fewshot/color_5shot", "eval/zeroshot/top1")', '"eval/zeroshot/top1",)'),
                      name="ranked.py")
  resolve.resolve(ranked, build_evaluators=False, workdir=workdir)
  assert len(measured) == 1
  resolve.resolve(suite_file(tmp_path, SECONDS, HALF_BATCH, name="other.py"), build_evaluators=False, workdir=workdir)
  assert len(measured) == 2


@pytest.mark.parametrize("edit, message", [
    (('match="flops"', 'match="flops", timing=dict(rounds=2)'),
     r"budget.timing is for match='seconds' \(measured step times\), not match='flops'"),
    (('match="flops"', 'match="seconds", timing=dict(rounds=0)'), r"budget.timing.rounds=0; valid: dict with keys"),
    (('match="flops"', 'match="seconds", timing=dict(steps=1.5)'), r"budget.timing.steps=1.5; valid"),
    (('match="flops"', 'match="seconds", timing=dict(round=2)'), r"budget.timing=\{'round': 2\}; valid: dict with "
                                                                 r"keys from \['rounds', 'steps', 'warmup'\]"),
    (('match="flops"', 'match="second"'), r"budget.match='second'; valid: .*'seconds'\]"),
    (("zeroshot=dict(num_examples=32)", 'zeroshot=dict(num_examples=32, arms=("clip", "clip2"))'),
     r"evals.zeroshot.arms=\['clip', 'clip2'\]; valid: a list of distinct arms of the suite, from \['clip', "
     r"'clip_noisy'\]"),
    (("zeroshot=dict(num_examples=32)", "zeroshot=dict(num_examples=32, arms=())"), r"evals.zeroshot.arms=\[\]"),
    (("zeroshot=dict(num_examples=32)", 'zeroshot=dict(num_examples=32, arms=("clip",))'),
     r"rank_by \['eval/zeroshot/top1'\] is measured for some arms only"),
])
def test_bad_options_fail_first_naming_them(edit, message, tmp_path, capsys):
  workdir = str(tmp_path / "cmp")
  assert compare.main(["--suite", suite_file(tmp_path, edit), "--workdir", workdir]) == 2
  err = capsys.readouterr().err
  assert re.search(message, err), err
  assert not os.path.exists(workdir)


def test_an_evaluator_for_some_arms_only(tmp_path, capsys):
  path = suite_file(tmp_path, ("zeroshot=dict(num_examples=32)", 'zeroshot=dict(num_examples=32, arms=("clip_noisy",))'),
                    ('"eval/fewshot/color_5shot", "eval/zeroshot/top1")', '"eval/fewshot/color_5shot",)'))
  definition = suite_lib.load_definition(path)
  assert sorted(suite_lib.run_config(definition, "clip", 0, 4).evals) == ["fewshot"]
  noisy = suite_lib.run_config(definition, "clip_noisy", 1, 4).evals
  assert sorted(noisy) == ["fewshot", "zeroshot"] and "arms" not in noisy["zeroshot"]
  assert suite_lib.shared_evals(definition) == ["fewshot"]
  assert compare.main(["--suite", path, "--workdir", str(tmp_path / "new"), "--dry_run"]) == 0
  assert "at 2 points of each run (the last at its end): fewshot, zeroshot (arms clip_noisy)" in capsys.readouterr().out
