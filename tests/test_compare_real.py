"""configs/compare/vit_b16_objectives.py on fixture data in the formats real runs read: webdataset
shards, a tokenizer.json, a tfds classification set (zero-shot, and few-shot from its train split),
a JSONL retrieval set, a SugarCrepe folder. Two of its arms at test size (tests/b16_suite_tiny.py)
train two seeds end to end and the report's numbers are the runs' own; the dry run shows every
scale preset at full B/16 without compiling anything; bad arguments fail before anything runs."""

import json
import os
import re

import jax
import pytest
import tensorflow_datasets as tfds
from jax import monitoring

import b16_suite_tiny
from compare_checks import check_report_numbers, last_values
from real_data import encode, shapes_pairs, word_tokenizer, write_folder, write_tar_shards, write_tfds
from vljax.compare import __main__ as compare
from vljax.compare import record
from vljax.compare import suite as suite_lib
from vljax.config import load_config
from vljax.data import shapes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE = os.path.join(ROOT, "configs", "compare", "vit_b16_objectives.py")
TINY = os.path.join(ROOT, "tests", "b16_suite_tiny.py")
RUN_RECIPE = os.path.join(ROOT, "configs", "compare", "run.py")
SIZE = 32
ARMS = ("clip", "siglip", "coca", "cappa", "cap")
# DataComp's scales (mlfoundations/datacomp scale_configs.py): samples seen, batch, lr, warmup, beta2.
DATACOMP = {"small": (12_800_000, 4096, 5e-4, 500, 0.98), "medium": (128_000_000, 4096, 5e-4, 500, 0.98),
            "large": (1_280_000_000, 8192, 5e-4, 500, 0.98), "xlarge": (12_800_000_000, 90_112, 1e-3, 10_000, 0.95)}
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"  # jax.monitoring's event for each XLA compile
COLORS = list(shapes.COLOR_NAMES[:2])  # the classification sets' classes: an object's color


def _color_examples(world, start, n):
  """n single-object scenes from index `start` on whose color is one of COLORS, labelled by it."""
  out, i = [], start
  while len(out) < n:
    e = world.zeroshot_example(i)
    if e["label"] // len(shapes.SHAPES) < len(COLORS):
      out.append(dict(image=e["image"], label=e["label"] // len(shapes.SHAPES)))
    i += 1
  return out


def _sugarcrepe(root, world, n):
  """A SugarCrepe folder (swap_att.json: id -> filename, caption, negative_caption), its images apart."""
  os.makedirs(root / "images")
  rows = {}
  for i in range(n):
    e = world.binding_example(i)
    (root / "images" / f"{i}.png").write_bytes(encode(e["image"], "PNG"))
    rows[str(i)] = dict(filename=f"{i}.png", caption=e["caption"], negative_caption=e["attribute_swapped"])
  os.makedirs(root / "sets")
  (root / "sets" / "swap_att.json").write_text(json.dumps(rows))
  return str(root / "sets"), str(root / "images")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """The fixture sets, and the suite argument naming them all (seeds=2)."""
  root = tmp_path_factory.mktemp("b16_data")
  world = shapes.ShapesWorld(image_size=SIZE)
  shards = write_tar_shards(root / "train", shapes_pairs(64, image_size=SIZE), per_shard=16, fmt="PNG")
  label = tfds.features.ClassLabel(names=COLORS)
  image = tfds.features.Image(shape=(None, None, 3))
  colors = write_tfds(root / "tfds", "shapes_colors", {"train": _color_examples(world, 0, 60),
                                                       "validation": _color_examples(world, 5000, 16)},
                      dict(image=image, label=label))
  (root / "classnames.txt").write_text("\n".join(COLORS) + "\n")
  pairs = shapes_pairs(16, image_size=SIZE, split="eval")
  retrieval = write_folder(root / "retrieval", [dict(image=p["image"], caption=[p["caption"], p["caption"] + " here"])
                                                for p in pairs], caption_key="captions", fmt="PNG")
  sugarcrepe, images = _sugarcrepe(root / "sugarcrepe", world, 8)
  tokenizer = word_tokenizer(root / "tokenizer.json", ["<pad>", "</s>", "<unk>", *shapes.VOCAB])
  args = dict(scale="small", train=f"webdataset:{root}/train/shard-{{00000..{len(shards) - 1:05d}}}.tar",
              tokenizer=f"hf:{tokenizer}", zeroshot=colors, classnames=str(root / "classnames.txt"),
              retrieval=retrieval, fewshot_colors=colors,
              compositionality_sugarcrepe=f"sugarcrepe:{sugarcrepe}?images={images}", seeds="2")
  return dict(root=root, args=args)


def suite_arg(data, **change):
  """`FILE:ARG` of the fixture's argument with keys changed (None: left out)."""
  args = {k: v for k, v in dict(data["args"], **change).items() if v is not None}
  return ",".join(f"{k}={v}" for k, v in args.items())


@pytest.mark.slow
def test_the_suite_trains_and_reports_on_real_format_data(data, tmp_path):
  """Both arms x two seeds through the suite's data and evaluators; the report holds the runs' own
  numbers."""
  workdir = str(tmp_path / "b16")
  argument = f"{TINY}:{suite_arg(data)}"
  assert compare.main(["--suite", argument, "--workdir", workdir]) == 0
  arms = record.read(workdir)["arms"]
  assert list(arms) == list(b16_suite_tiny.ARMS) and arms["clip"]["total_steps"] == b16_suite_tiny.STEPS
  clip, cappa = arms["clip"], arms["cappa"]
  assert abs(cappa["total_flops"] - clip["total_flops"]) <= cappa["flops_per_step"] / 2  # CLIP's FLOPs
  for arm, seed in [(a, s) for a in arms for s in (0, 1)]:
    run_dir = os.path.join(workdir, arm, f"seed{seed}")
    cfg = json.load(open(os.path.join(run_dir, "config.json")))
    assert (cfg["data"]["name"], cfg["data"]["tokenizer"]) == ("webdataset", data["args"]["tokenizer"])
    assert cfg["evals"]["fewshot_colors"]["shots_dataset"]["split"] == "train"
    series = last_values(run_dir)
    assert series["data/skipped"][arms[arm]["total_steps"]] == 0  # every fixture sample decoded
  report, finals = check_report_numbers(workdir)
  for metric in ("eval/zeroshot/top1", "eval/retrieval/i2t_r1", "eval/fewshot_colors/acc_10shot",
                 "eval/compositionality_sugarcrepe/acc"):
    assert metric in report["rank_by"] and list(finals[metric]) == ["clip", "cappa"], metric
  assert "eval/zeroshot/color_acc" not in finals  # the set on disk, not the shapes world
  # A cluster task (configs/compare/run.py) rebuilds the very config that trained, from suite.json.
  assert record.read(workdir)["suite_file"] == report["suite"] == argument
  cfg = load_config(RUN_RECIPE, f"workdir={workdir},arm=cappa,seed=1")
  trained = json.load(open(os.path.join(workdir, "cappa", "seed1", "config.json")))
  assert json.loads(cfg.to_json_best_effort()) == trained


@pytest.fixture
def compiles():
  """The programs XLA compiles from here on (names), through jax.monitoring's backend-compile event."""
  names = []

  def listen(event, duration, **kwargs):
    if event == BACKEND_COMPILE:
      names.append(kwargs.get("fun_name", "?"))
  monitoring.register_event_duration_secs_listener(listen)
  yield names
  monitoring.unregister_event_duration_listener(listen)


def test_dry_run_shows_every_scale_at_full_b16_and_compiles_nothing(data, tmp_path, capsys, compiles, monkeypatch):
  """Each scale's steps, examples and FLOPs for the five B/16 arms at matched FLOPs; the cluster
  plans carry the argument to the command that finishes the suite; nothing written, nothing compiled."""
  fresh = str(tmp_path / "new")
  monkeypatch.setattr(record, "check", lambda workdir, rec: False)  # gs:// below: no GCS here, a new directory
  plans = {"small": ["--plan", "slurm"], "medium": ["--plan", "tpu_pod", "--launch_args=--zone z"]}
  per_step = {}
  for scale, (samples, batch, lr, warmup, b2) in DATACOMP.items():
    argument = f"{SUITE}:{suite_arg(data, scale=scale)}"
    clip = suite_lib.arm_config(suite_lib.load_definition(argument), "clip")
    assert (clip.optimizer.lr, clip.optimizer.b2, clip.schedule.warmup_steps) == (lr, b2, warmup)
    plan = plans.get(scale, [])
    workdir = "gs://b/b16" if scale == "medium" else fresh
    assert compare.main(["--suite", argument, "--workdir", workdir, "--dry_run", *plan]) == 0
    out = capsys.readouterr().out
    assert "5 arms x 2 seeds = 10 runs; budget flops = " in out
    table = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(ARMS)}
    assert list(table) == list(ARMS)
    assert table["clip"][2:4] == [str(round(samples / batch)), str(round(samples / batch) * batch)]
    for arm, row in table.items():
      assert int(row[3]) == int(row[2]) * batch and row[5] == table["clip"][5], row  # the FLOPs of CLIP's steps
    per_step[scale] = {arm: float(row[4]) for arm, row in table.items()}
    if plan:
      assert "configs/compare/run.py:workdir=" in out
      assert out.splitlines()[-1] == f"python -m vljax.compare --suite '{argument}' --workdir {workdir}"
    if scale == "small":
      assert "sbatch --array=0-9 launch/slurm.sh" in out
    if scale == "medium":
      assert "launch/tpu_pod.sh --name vljax-vit-b16-objectives-cappa-s1 " in out
  assert per_step["large"]["clip"] == pytest.approx(2 * per_step["small"]["clip"], rel=0.01)  # twice the batch
  small = per_step["small"]
  assert small["clip"] == small["siglip"] < small["cappa"] == small["cap"] < small["coca"]
  assert not os.path.exists(fresh) and compiles == []


NO_EVAL_SETS = dict(zeroshot=None, classnames=None, retrieval=None, fewshot_colors=None,
                    compositionality_sugarcrepe=None)
# name -> (argument changes: a value, None to leave the key out, or a function of the fixture's
# value; what the error says)
BAD = {
    "unknown scale": (dict(scale="huge"), r"scale='huge' is unknown; valid: \['small', 'medium', 'large', 'xlarge'\]"),
    "no scale": (dict(scale=None), r"no \['scale'\] in the argument; this suite needs \['scale', 'train', "
                                   r"'tokenizer'\]"),
    "no training data": (dict(train=None), r"no \['train'\] in the argument"),
    "no tokenizer": (dict(tokenizer=None), r"no \['tokenizer'\] in the argument"),
    "no evaluation set": (NO_EVAL_SETS, r"no evaluation set in the argument; valid: at least one of zeroshot="),
    "unknown key": (dict(zeroshoot="/x"), r"'zeroshoot=/x': expected KEY=VALUE with KEY in \['classnames', .*\], "
                                          r"or one of \['fewshot\[_LABEL\]', 'compositionality\[_LABEL\]'\]"),
    "bad label": (dict(fewshot_Colors="/x"), r"fewshot_Colors has a bad label; valid: lower-case letters"),
    "unknown set option": (dict(fewshot_colors=lambda v: v + "?split=test"),
                           r"option 'split=test'; valid: KEY=VALUE with KEY in \['shots', 'test'\]"),
    "unknown source kind": (dict(train="parquet:/x"), r"train='parquet:/x': expected KIND:PATH with KIND in \['tfds'"),
    "bad seeds": (dict(seeds="0"), r"seeds='0'; valid: an int >= 1"),
    "missing shards": (dict(train="webdataset:/nowhere/{0..1}.tar"), r"'/nowhere/0.tar' does not exist"),
    "missing tokenizer": (dict(tokenizer="hf:/nowhere/tokenizer.json"), r"'/nowhere/tokenizer.json' does not exist"),
    "missing zero-shot set": (dict(zeroshot="/nowhere/cls"), r"'/nowhere/cls' does not exist"),
    "missing images": (dict(compositionality_sugarcrepe=lambda v: v.split("?")[0] + "?images=/nowhere"),
                       r"8 image file\(s\) missing, e.g. '/nowhere/0.png'"),
    "unknown split": (dict(fewshot_colors=lambda v: v + "?test=tst"),
                      r"'tst' is not a split of .*shapes_colors.*; available: \['train', 'validation'\]"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_arguments_fail_before_anything_runs(case, data, tmp_path, capsys):
  change, message = BAD[case]
  change = {k: v(data["args"][k]) if callable(v) else v for k, v in change.items()}
  workdir = str(tmp_path / "b16")
  assert compare.main(["--suite", f"{SUITE}:{suite_arg(data, **change)}", "--workdir", workdir]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and re.search(message, err), err
  assert not os.path.exists(workdir)


def test_a_suite_without_an_argument_refuses_one(tmp_path, capsys):
  assert compare.main(["--suite", os.path.join(ROOT, "configs", "compare", "tiny.py:scale=small"),
                       "--workdir", str(tmp_path / "w")]) == 2
  assert "tiny.py': config argument 'scale=small': expected KEY=VALUE with KEY in []" in capsys.readouterr().err
