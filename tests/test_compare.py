"""`python -m vljax.compare` on configs/compare/tiny.py (two arms, two seeds, a few steps), run once for
the module: the report's numbers against the runs' own metrics.jsonl (recomputed here with numpy),
matched FLOPs, the dry run, the cluster plans, a rerun that skips finished runs, resumes an
interrupted one and fills a lost evaluation, and bad input failing before anything runs."""

import contextlib
import io
import json
import os
import re
import signal
import subprocess

import numpy as np
import pytest

from compare_checks import check_report_numbers, last_values, rows
from conftest import workdir_listing
from vljax import models
from vljax.compare import __main__ as compare
from vljax.compare import budget, launch, record, runs, stats
from vljax.config import load_config
from vljax.models.composable import Composable
from vljax.train import preemption

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "compare", "tiny.py")
RUN_RECIPE = os.path.join(ROOT, "configs", "compare", "run.py")
RUNS = [("clip", 0), ("clip", 1), ("clip_noisy", 0), ("clip_noisy", 1)]
STEPS = 4  # both arms: the same FLOPs per step


def files(run_dir):
  """Every file under run_dir with its size and mtime."""
  return {e[0]: e[2:] for e in workdir_listing(run_dir) if e[1] == "file"}


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
  """The tiny suite run twice. The first time, the last run is preempted at step 2 (SIGTERM, as a
  cluster sends it): the command stops there. Then clip/seed1 loses its step-2 evaluations (as if
  killed after that checkpoint, before them), and the command is run again."""
  workdir = str(tmp_path_factory.mktemp("compare") / "tiny")
  run_dir = lambda arm, seed: os.path.join(workdir, arm, f"seed{seed}")  # noqa: E731
  with pytest.MonkeyPatch.context() as patch:
    target = []
    train = runs.train

    def train_marked(resolved, arm, seed, path):
      target[:] = [(arm, seed) == RUNS[-1]]
      return train(resolved, arm, seed, path)

    at = preemption.StopAgreement.at

    def at_preempted(self, step):
      if target[0] and step == 2:
        os.kill(os.getpid(), signal.SIGTERM)
      return at(self, step)

    patch.setattr(runs, "train", train_marked)
    patch.setattr(preemption.StopAgreement, "at", at_preempted)
    with contextlib.redirect_stderr(io.StringIO()) as err:
      assert compare.main(["--suite", TINY, "--workdir", workdir]) == 0
  stopped = err.getvalue()
  first = {run: files(run_dir(*run)) for run in RUNS}
  original = {run: last_values(run_dir(*run)) for run in RUNS}
  lost = run_dir("clip", 1)
  kept = [r for r in rows(lost) if not (r["step"] == 2 and any(k.startswith("eval/") for k in r))]
  with open(os.path.join(lost, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in kept)
  edited = files(lost)
  assert compare.main(["--suite", TINY, "--workdir", workdir]) == 0
  return dict(dir=workdir, run_dir=run_dir, stopped=stopped, first=first, original=original, edited=edited,
              second={run: files(run_dir(*run)) for run in RUNS})


def test_the_tiny_suite_end_to_end(suite, tmp_path, capsys):
  """Every check on the suite's directory in one test: pytest-xdist would otherwise hand the tests
  of this module to both workers, and each would train the suite."""
  d = suite["dir"]
  check_every_run_is_an_ordinary_workdir_at_matched_flops(d)
  check_report_numbers_are_the_runs_own(d)
  check_report_ranks_and_plots(d)
  check_a_stopped_run_stops_the_suite_and_resumes(suite)
  check_a_rerun_skips_finished_runs(suite)
  check_a_rerun_fills_a_lost_evaluation_without_retraining(suite)
  check_a_dry_run_shows_finished_runs(d, capsys)
  check_slurm_plan_is_a_job_array_of_the_runs(d, tmp_path, capsys)
  check_a_workdir_of_another_suite_is_refused_untouched(d, tmp_path, capsys)
  check_report_only_rewrites_the_report_alone(d, capsys)  # last: it rewrites the report


def check_every_run_is_an_ordinary_workdir_at_matched_flops(suite_dir):
  arms = record.read(suite_dir)["arms"]
  assert {a: arms[a]["total_steps"] for a in arms} == {"clip": STEPS, "clip_noisy": STEPS}
  assert arms["clip"]["total_flops"] == pytest.approx(STEPS * arms["clip"]["flops_per_step"])
  for arm, seed in RUNS:
    run_dir = os.path.join(suite_dir, arm, f"seed{seed}")
    cfg = json.load(open(os.path.join(run_dir, "config.json")))
    assert (cfg["seed"], cfg["total_steps"], sorted(cfg["evals"])) == (seed, STEPS, ["fewshot", "zeroshot"])
    assert cfg["data"]["caption_noise"] == (0.5 if arm == "clip_noisy" else 0.0)
    assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == ["2", "4"]  # eval_points = 2, both kept
    series = last_values(run_dir)
    assert max(series["train/loss"]) == STEPS
    assert set(series["eval/zeroshot/top1"]) == set(series["eval/fewshot/color_5shot"]) == {2, 4}


def check_report_numbers_are_the_runs_own(suite_dir):
  _, finals = check_report_numbers(suite_dir)
  assert "eval/fewshot/color_5shot" in finals
  assert all(list(by_arm) == ["clip", "clip_noisy"] for by_arm in finals.values())


def check_report_ranks_and_plots(suite_dir):
  report = json.load(open(os.path.join(suite_dir, "report.json")))
  arms = ["clip", "clip_noisy"]
  mean = {arm: np.mean([1 + sum(report["metrics"][m][o]["mean"] > report["metrics"][m][arm]["mean"] for o in arms)
                        for m in report["rank_by"]]) for arm in arms}
  assert [r["arm"] for r in report["ranking"]] == sorted(arms, key=mean.get)
  text = open(os.path.join(suite_dir, "report.md")).read()
  assert text.startswith("# Comparison") and text.index("## Ranking") < text.index("## Runs")
  assert re.search(r"\| 1 \| clip(_noisy)? \| \d\.\d\d \| -?\d\.\d{3} \[-?\d\.\d{3}, -?\d\.\d{3}\]", text), text
  for name in ("final_metrics", "metrics_vs_compute", "learning_curves"):
    assert f"(plots/{name}.png)" in text
    with open(os.path.join(suite_dir, "plots", f"{name}.png"), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  # Metrics and loss against training compute: the evaluated steps times the FLOPs per step.
  per_step = report["arms"]["clip"]["flops_per_step"]
  for arm in arms:
    curve = report["curves"]["eval/zeroshot/top1"][arm]
    assert [p["step"] for p in curve] == [2, 4] and [p["n"] for p in curve] == [2, 2]
    assert [p["compute"] for p in curve] == pytest.approx([2 * per_step, 4 * per_step])
    assert [p["step"] for p in report["curves"]["train/loss"][arm]] == [1, 2, 3, 4]


def check_a_stopped_run_stops_the_suite_and_resumes(suite):
  assert "stopped: clip_noisy/seed1 stopped at step 2 of 4; rerun the same command to resume" in suite["stopped"]
  path = suite["run_dir"]("clip_noisy", 1)
  assert not any(f.startswith("checkpoints/4/") for f in suite["first"][("clip_noisy", 1)])
  assert sorted(os.listdir(os.path.join(path, "checkpoints"))) == ["2", "4"]
  steps = [r["step"] for r in rows(path) if "train/loss" in r]
  assert steps == [1, 2, 3, 4]  # resumed after step 2, not restarted


def check_a_rerun_skips_finished_runs(suite):
  for run in [("clip", 0), ("clip_noisy", 0)]:
    assert suite["second"][run] == suite["first"][run], run  # not a file touched


def check_a_rerun_fills_a_lost_evaluation_without_retraining(suite):
  changed = {f for f, meta in suite["second"][("clip", 1)].items() if suite["edited"].get(f) != meta}
  assert "metrics.jsonl" in changed and not any(f.startswith("checkpoints") for f in changed)
  filled, original = last_values(suite["run_dir"]("clip", 1)), suite["original"][("clip", 1)]
  for key in ("eval/fewshot/color_5shot", "eval/zeroshot/top1", "eval/zeroshot/shape_acc"):
    assert filled[key][2] == pytest.approx(original[key][2]), key  # vljax.evaluate, from the step-2 checkpoint


def check_a_dry_run_shows_finished_runs(suite_dir, capsys):
  assert compare.main(["--suite", TINY, "--workdir", suite_dir, "--dry_run"]) == 0
  assert [line.split()[-1] for line in capsys.readouterr().out.splitlines()[2:4]] == ["done", "done"]


def check_slurm_plan_is_a_job_array_of_the_runs(suite_dir, tmp_path, capsys):
  fresh = str(tmp_path / "cluster")
  assert compare.main(["--suite", TINY, "--workdir", fresh, "--plan", "slurm", "--launch_args=--per-node"]) == 0
  out = capsys.readouterr().out
  task_list = os.path.join(fresh, launch.TASK_LIST)
  assert f"sbatch --array=0-3 launch/slurm.sh --task-list {task_list} --per-node" in out
  tasks = open(task_list).read().splitlines()
  assert tasks[3] == (f"--config configs/compare/run.py:workdir={fresh},arm=clip_noisy,seed=1 "
                      f"--workdir {fresh}/clip_noisy/seed1")
  assert record.read(fresh)["arms"] == record.read(suite_dir)["arms"]
  proc = subprocess.run(["bash", "launch/slurm.sh", "--dry-run", "--nodes-list", "n1", "--task-list", task_list,
                         "--task-index", "3"], cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  srun = proc.stdout.strip().splitlines()[-1]
  assert srun.startswith("srun --nodes=1 ") and f"--workdir {fresh}/clip_noisy/seed1" in srun
  # The array task's recipe rebuilds the very config the local run trained.
  cfg = load_config(RUN_RECIPE, f"workdir={fresh},arm=clip_noisy,seed=1")
  trained = json.load(open(os.path.join(suite_dir, "clip_noisy", "seed1", "config.json")))
  assert json.loads(cfg.to_json_best_effort()) == trained
  assert compare.main(["--suite", TINY, "--workdir", suite_dir, "--plan", "slurm", "--dry_run"]) == 0
  assert "every run of" in capsys.readouterr().out  # nothing left to launch


def check_a_workdir_of_another_suite_is_refused_untouched(suite_dir, tmp_path, capsys):
  listing = workdir_listing(suite_dir)
  other = _suite_file(tmp_path, ("c.seeds = (0, 1)", "c.seeds = (0, 1, 2)"))
  assert compare.main(["--suite", other, "--workdir", suite_dir]) == 2
  err = capsys.readouterr().err
  assert "holds runs of another suite" in err and "definition.seeds: [0, 1] -> [0, 1, 2]" in err, err
  (tmp_path / "stray").mkdir()
  (tmp_path / "stray" / "notes.txt").write_text("x")
  assert compare.main(["--suite", TINY, "--workdir", str(tmp_path / "stray")]) == 2
  assert "holds files but no suite.json" in capsys.readouterr().err
  assert workdir_listing(suite_dir) == listing


def check_report_only_rewrites_the_report_alone(suite_dir, capsys):
  runs_before = {run: files(os.path.join(suite_dir, run[0], f"seed{run[1]}")) for run in RUNS}
  os.remove(os.path.join(suite_dir, "report.json"))
  assert compare.main(["--suite", TINY, "--workdir", suite_dir, "--report_only"]) == 0
  assert os.path.exists(os.path.join(suite_dir, "report.json")) and "report: " in capsys.readouterr().out
  assert {run: files(os.path.join(suite_dir, run[0], f"seed{run[1]}")) for run in RUNS} == runs_before


def test_dry_run_prints_the_matched_runs_and_writes_nothing(tmp_path, capsys):
  # A noisy arm at half the batch: half the FLOPs per step, so twice the steps for the same budget.
  halved = _suite_file(tmp_path, ('("data.caption_noise", 0.5)', '("data.caption_noise", 0.5), ("batch_size", 8)'))
  fresh = str(tmp_path / "new")
  assert compare.main(["--suite", halved, "--workdir", fresh, "--dry_run"]) == 0
  out = capsys.readouterr().out
  assert not os.path.exists(fresh)
  assert "2 arms x 2 seeds = 4 runs; budget flops = " in out
  header = next(line for line in out.splitlines() if line.startswith("arm "))
  assert header.split() == ["arm", "seeds", "steps", "examples", "FLOPs/step", "total", "FLOPs", "trainable", "params",
                            "workdir", "status"]
  clip, noisy = (line.split() for line in out.splitlines() if line.startswith(("clip ", "clip_noisy ")))
  assert clip[:4] == ["clip", "0,1", "4", "64"] and noisy[:4] == ["clip_noisy", "0,1", "8", "64"]
  assert float(clip[4]) == pytest.approx(2 * float(noisy[4]), rel=1e-2) and clip[5] == noisy[5]
  trained, _, total = clip[6:9]
  assert trained == total and trained.endswith("k")  # nothing frozen: every param trains
  assert clip[9] == f"{fresh}/clip/seed{{0,1}}" and clip[10] == "new"


def test_the_bridge_suite_counts_each_bridges_trainable_params(tmp_path, capsys):
  """Every bridge arm trains its bridge alone between the same frozen towers; the dry run says how many
  params that is, beside all of the model's."""
  suite = os.path.join(ROOT, "configs", "compare", "shapes_bridges.py")
  assert compare.main(["--suite", suite, "--workdir", str(tmp_path / "d"), "--dry_run"]) == 0
  rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()
          if line.split() and line.split()[0] in ("llava", "flamingo", "qformer")}
  counts = {arm: (markdown_counts(row[6]), markdown_counts(row[8])) for arm, row in rows.items()}
  assert all(trained < total for trained, total in counts.values())
  # LLaVA's projector is one linear map; Flamingo's resampler and cross-attention layers are more.
  assert counts["llava"][0] < counts["qformer"][0] and counts["llava"][0] < counts["flamingo"][0]


def markdown_counts(text):
  """'8.32k' -> 8320.0."""
  scale = {"k": 1e3, "M": 1e6, "B": 1e9}
  return float(text[:-1]) * scale[text[-1]] if text[-1] in scale else float(text)


def test_blip_arms_train_fewer_steps_for_their_fusion_passes(tmp_path, capsys):
  """The shapes suite's BLIP arms at CLIP's FLOPs: their fusion passes are counted, so fewer steps."""
  suite = os.path.join(ROOT, "configs", "compare", "shapes_objectives.py")
  assert compare.main(["--suite", f"{suite}:arms=clip+blip+itc_itm+itc_mlm", "--workdir", str(tmp_path / "d"),
                       "--dry_run"]) == 0
  out = capsys.readouterr().out
  steps = {line.split()[0]: int(line.split()[2]) for line in out.splitlines()
           if line.split() and line.split()[0] in ("clip", "blip", "itc_itm", "itc_mlm")}
  assert steps["clip"] == 750 and steps["itc_mlm"] < 750 and steps["blip"] < steps["itc_itm"] < steps["itc_mlm"]
  # Only the momentum model's forward passes go uncounted (no declared passes).
  assert "note: blip: objective(s) ['momentum_contrastive']" in out and "note: itc_itm" not in out
  for arg, message in (("arms=clip+albef", r"arms=\['albef'\]; valid: names from"),
                       ("arms=blip", r"arms=blip: the budget is CLIP's .* include clip")):
    with pytest.raises(ValueError, match=message):
      load_config(suite, arg)


def test_capfilt_suite_trains_each_dataset_at_the_noisy_ones_budget(tmp_path, capsys):
  """configs/compare/capfilt_shapes.py: one recipe on the noisy, filtered, bootstrapped and clean scenes
  on disk, the same steps each, evaluated on the shapes world."""
  suite = os.path.join(ROOT, "configs", "compare", "capfilt_shapes.py")
  arg = "model=clip,seeds=2,noisy=/d/noisy,filtered=/d/filtered,bootstrapped=/d/boot,clean=/d/clean"
  cfg = load_config(suite, arg)
  assert sorted(cfg.arms) == ["bootstrapped", "clean", "filtered", "noisy"] and cfg.seeds == (0, 1)
  data = {name: dict(arm.overrides) for name, arm in cfg.arms.items()}
  assert data["noisy"] == {"data.name": "folder", "data.path": "/d/noisy", "data.shapes_scenes": True,
                           "data.crop_scale": (1.0, 1.0)}
  assert data["bootstrapped"]["data.name"] == "array_record" and data["bootstrapped"]["data.path"] == "/d/boot"
  from vljax.capfilt import noisy_shapes
  for name, noise in (("noisy", 0.5), ("clean", 0.0)):
    noisy_shapes.write(str(tmp_path / name), num_images=2, noise=noise, progress=False)
  assert compare.main(["--suite", f"{suite}:noisy={tmp_path}/noisy,clean={tmp_path}/clean", "--workdir",
                       str(tmp_path / "d"), "--dry_run"]) == 0
  rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(("noisy ", "clean "))]
  assert [r[:3] for r in rows] == [["noisy", "0,1,2", "750"], ["clean", "0,1,2", "750"]]
  assert load_config(suite, "noisy=/d,steps=375").budget.to_dict() == {"match": "steps", "value": 375}
  for bad, message in (("model=clip", r"needs noisy=DIR"), ("noisy=/d,model=coca", r"model='coca'; valid: \['blip', 'clip'\]"),
                       ("noisy=/d,seeds=0", r"seeds='0'; valid: an integer >= 1"),
                       ("noisy=/d,steps=x", r"steps='x'; valid: an integer >= 1")):
    with pytest.raises(ValueError, match=message):
      load_config(suite, bad)


def test_bridge_suite_matches_the_three_bridges_flops(tmp_path, capsys):
  """configs/compare/shapes_bridges.py: LLaVA's projector, Flamingo and the Q-Former on one frozen
  encoder and LM, one image a sequence, at LLaVA's FLOPs (the Q-Former's 8-token prompt is cheapest)."""
  suite = os.path.join(ROOT, "configs", "compare", "shapes_bridges.py")
  assert compare.main(["--suite", f"{suite}:clip=/r/demo,lm=/r/lm,stage1=/r/s1", "--workdir", str(tmp_path / "d"),
                       "--dry_run"]) == 0
  rows = {r[0]: r for r in (line.split() for line in capsys.readouterr().out.splitlines())
          if r and r[0] in ("llava", "flamingo", "qformer")}
  assert sorted(rows) == ["flamingo", "llava", "qformer"] and rows["llava"][2] == "300"
  assert int(rows["qformer"][2]) > int(rows["llava"][2])
  totals = [float(r[5]) for r in rows.values()]
  assert max(totals) < 1.01 * min(totals)  # the same total FLOPs, up to whole steps
  cfg = load_config(suite, "clip=/r/demo,lm=/r/lm,stage1=/r/s1")
  assert cfg.arms.qformer.recipe == "blip2_shapes_stage2.py:stage1=/r/s1,lm=/r/lm"


def test_tpu_pod_plan_is_one_slice_per_run(monkeypatch, capsys):
  monkeypatch.setattr(record, "check", lambda workdir, rec: False)  # no GCS here: a new directory
  assert compare.main(["--suite", TINY, "--workdir", "gs://b/cmp", "--plan", "tpu_pod", "--dry_run",
                       "--launch_args", "--zone us-central2-b --accelerator-type v5p-8"]) == 0
  lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("launch/tpu_pod.sh")]
  assert len(lines) == 4
  assert lines[0] == ("launch/tpu_pod.sh --name vljax-tiny-clip-s0 --config "
                      "configs/compare/run.py:workdir=gs://b/cmp,arm=clip,seed=0 --workdir gs://b/cmp/clip/seed0 "
                      "--zone us-central2-b --accelerator-type v5p-8")
  assert compare.main(["--suite", TINY, "--workdir", "local/dir", "--plan", "tpu_pod", "--dry_run",
                       "--launch_args=--zone z"]) == 2
  assert "is not on GCS; valid: gs://BUCKET/DIR" in capsys.readouterr().err


class NoFlopsComposable(Composable):
  flop_parts = None  # a model that declares no FLOP count


def _suite_file(tmp_path, text):
  """configs/compare/tiny.py with its body edited: `text` is (old, new)."""
  source = open(TINY).read()
  assert text[0] in source, text[0]
  path = tmp_path / "suite.py"
  path.write_text(source.replace(*text))
  return str(path)


NOISY = '("data.caption_noise", 0.5)'
BAD = {
    "unknown arm field": (('clip_noisy=dict(recipe=', 'clip_noisy=dict(recipie='),
                          r"arm 'clip_noisy': unknown field\(s\) \['recipie'\]; valid: \['recipe', 'overrides'\]"),
    "unknown recipe": (('clip_noisy=dict(recipe="clip_shapes.py"', 'clip_noisy=dict(recipe="nope_shapes.py"'),
                       r"arm 'clip_noisy': recipe 'nope_shapes.py' not found .*; valid: one of \[.*'clip_shapes.py'"),
    "unknown override key": ((NOISY, '("data.caption_noize", 0.5)'),
                             r"arm 'clip_noisy' \(clip_shapes.py\): unknown override key 'data.caption_noize': no "
                             r"'caption_noize' under data; valid there: \[.*'caption_noise'"),
    "unknown suite field": (("c.eval_points = 2", "c.eval_pionts = 2"),
                            r"unknown field\(s\) \['eval_pionts'\]; valid: \['seeds', 'budget'"),
    "suite-owned override": ((NOISY, '("seed", 3)'), r"override 'seed' is set for every run by the suite's `seeds`"),
    "evaluator the model cannot serve": (("zeroshot=dict(num_examples=32)", "zeroshot=dict(num_examples=32), caption=dict()"),
                                         r"arm 'clip' \(clip_shapes.py\): evals.caption \(captioning\) needs caption "
                                         r"generation from an image; model 'composable' has"),
    "unknown evaluator": (("zeroshot=dict(num_examples=32)", "zeroshot=dict(num_examples=32), zeroshoot=dict()"),
                          r"unknown evaluator 'zeroshoot'; valid: \["),
    "rank_by another evaluator": (('"eval/zeroshot/top1")', '"eval/retrieval/i2t_r1")'),
                                  r"rank_by \['eval/retrieval/i2t_r1'\] names no evaluator of the suite; valid: "
                                  r"metrics of \['fewshot', 'zeroshot'\]"),
    "budget like an unknown arm": (('like="clip"', 'like="clip2"'),
                                   r"budget.like='clip2' is no arm of the suite; valid: .*\['clip', 'clip_noisy'\]"),
    "missing FLOP count": ((NOISY, '("model.name", "no_flops")'),
                           r"arm 'clip_noisy': budget match='flops' cannot be matched: model 'no_flops' declares no "
                           r"FLOP count.*Valid: match='examples' or 'steps'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_fails_first_naming_it(case, tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(models.MODELS, "no_flops", NoFlopsComposable)
  edit, message = BAD[case]
  workdir = str(tmp_path / "cmp")
  assert compare.main(["--suite", _suite_file(tmp_path, edit), "--workdir", workdir]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and re.search(message, err), err
  assert not os.path.exists(workdir)


def test_budgets_in_examples_and_steps_match_too():
  cost = lambda batch, flops: budget.StepCost(batch, flops, "", 10)  # noqa: E731
  costs = {"a": cost(16, 2e9), "b": cost(8, None)}
  assert budget.matched_steps({"match": "examples", "like": "a"}, costs) == {"a": 10, "b": 20}
  assert budget.matched_steps({"match": "steps", "value": 7}, costs) == {"a": 7, "b": 7}
  with pytest.raises(ValueError, match="arm 'b': budget match='flops' cannot be matched"):
    budget.matched_steps({"match": "flops", "value": 1e12}, costs)
  with pytest.raises(ValueError, match="arm 'a': the budget examples=5 is less than one of its steps"):
    budget.matched_steps({"match": "examples", "value": 5}, costs)


def test_intervals_and_paired_differences():
  assert stats.summary([0.5]) == {"n": 1, "mean": 0.5, "std": None, "ci95": None}
  x = np.array([0.2, 0.4, 0.9])
  half = 4.302652729911275 * x.std(ddof=1) / np.sqrt(3)  # t(0.975, df=2)
  assert stats.summary(x)["ci95"] == pytest.approx([x.mean() - half, x.mean() + half])
  d = stats.paired_difference({0: 0.9, 1: 0.8, 2: 0.85}, {0: 0.5, 1: 0.45, 2: 0.52, 3: 0.1})
  assert d["seeds"] == [0, 1, 2] and d["distinguishable"]  # seed 3 has no pair
  assert not stats.paired_difference({0: 0.9, 1: 0.1}, {0: 0.5, 1: 0.5})["distinguishable"]
  assert not stats.paired_difference({0: 0.9}, {0: 0.1})["distinguishable"]  # n = 1: no interval
  same = stats.paired_difference({0: 0.508, 1: 0.6}, {0: 0.5, 1: 0.592})  # both seeds 0.008 apart
  assert same["ci95"] is None and not same["distinguishable"]
