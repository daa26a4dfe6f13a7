"""The training loop end to end on a tiny model: files, metrics, resume, LiT, bad input."""

import json
import os

import jax
import numpy as np
import pytest
from flax import traverse_util

from conftest import sigterm_after_logging, tiny_config, workdir_listing
from vljax import checkpoint_io
from vljax.metrics import read_metrics
from vljax.train import checkpoint as ckpt_lib
from vljax.train.trainer import train_and_evaluate


def _files(workdir):
  out = {}
  for root, _, names in os.walk(workdir):
    for n in names:
      p = os.path.join(root, n)
      with open(p, "rb") as f:
        out[os.path.relpath(p, workdir)] = f.read()
  return out


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  final = train_and_evaluate(tiny_config(), workdir)
  return workdir, final


def test_run_writes_contract_files_and_metrics(finished_run):
  workdir, final = finished_run
  assert os.path.exists(os.path.join(workdir, "config.json"))
  assert any(n.startswith("events.out.tfevents") for n in os.listdir(os.path.join(workdir, "tb")))
  series = read_metrics(workdir)
  for key in ("train/loss", "train/softmax_contrastive_loss", "train/lr", "train/examples_per_sec",
              "train/step_time", "eval/zeroshot/top1", "eval/zeroshot/color_acc", "eval/zeroshot/shape_acc",
              "eval/retrieval/i2t_r1", "eval/retrieval/t2i_r10", "eval/binding/acc"):
    assert key in series, key
  assert sorted(series["train/loss"]) == list(range(1, 7))
  # CPU: no known peak, so no MFU; the achieved model rate is logged all the same.
  assert "train/model_tflops_per_sec_per_device" in series and "train/mfu" not in series
  assert sorted(series["eval/zeroshot/top1"]) == [3, 6]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    assert all(isinstance(json.loads(line)["step"], int) for line in f)
  assert ckpt_lib.Checkpointer(workdir, every=3, keep=2).latest_step() == 6
  assert set(final) >= {"eval/zeroshot/top1", "eval/binding/acc"}


@pytest.mark.cross_path
def test_resume_continues_bitwise(finished_run, tmp_path, monkeypatch):
  """The same 6-step run, preempted (SIGTERM) after step 3 is logged, so it saves and stops at step 4;
  the rerun of the same command continues to 6: same losses, same evals."""
  workdir, final = finished_run
  part = str(tmp_path / "part")
  sigterm_after_logging(monkeypatch, 3)
  train_and_evaluate(tiny_config(), part)
  monkeypatch.undo()
  assert ckpt_lib.Checkpointer(part, every=3, keep=2).latest_step() == 4
  assert sorted(read_metrics(part)["train/loss"]) == [1, 2, 3, 4]
  resumed_final = train_and_evaluate(tiny_config(), part)
  full, resumed = read_metrics(workdir), read_metrics(part)
  for step in (5, 6):
    assert resumed["train/loss"][step] == full["train/loss"][step]
  assert resumed_final == final


def _embed_dim(size: int) -> dict:
  """tiny_config's model with another embedding size (its projections' shapes)."""
  model = tiny_config().model.to_dict()
  model["contrastive"]["embed_dim"] = size
  return model


def test_bad_checkpoint_shape_is_clear_and_harmless(finished_run):
  workdir, _ = finished_run
  before = _files(workdir)
  cfg = tiny_config(model=_embed_dim(24))
  with pytest.raises(ValueError, match=r"different model.*img_proj|different model.*embed|mismatched params"):
    train_and_evaluate(cfg, workdir)
  assert _files(workdir) == before


@pytest.mark.parametrize("change, message", [
    (dict(model=dict(name="perceiver")), "perceiver"),
    (dict(objectives={"triplet": 1.0}), "triplet"),
    (dict(evals={"vqa_v9": {"every": 1}}), "vqa_v9"),
    (dict(batch_size=12), "batch_size=12 is not divisible"),
    (dict(mesh=dict(data=16, fsdp=1, tensor=1)), "needs 16 devices but 8 exist"),
    (dict(objectives={"softmax_contrastive": 1.0, "captioning": 1.0}, data=dict(tokenizer="shapes?pad=eos")),
     "bos=none and pad=eos are for contrastive text towers"),
])
def test_bad_input_fails_before_touching_workdir(tmp_path, change, message):
  cfg = tiny_config()
  cfg.update(change)
  with pytest.raises(ValueError, match=message):
    train_and_evaluate(cfg, str(tmp_path / "w"))
  assert workdir_listing(tmp_path / "w") is None  # not a file or directory written


def test_missing_tokenizer_file(tmp_path):
  cfg = tiny_config()
  cfg.data.tokenizer = f"sentencepiece:{tmp_path}/missing.model"
  with pytest.raises((FileNotFoundError, ValueError), match="missing.model"):
    train_and_evaluate(cfg, str(tmp_path / "w"))


def test_lit_init_from_and_frozen_tower_is_bit_identical(finished_run, tmp_path):
  source, _ = finished_run
  cfg = tiny_config(frozen=("img/.*",), total_steps=3)
  cfg.init_from = dict(workdir=source, subtree="img", step=-1)
  lit = str(tmp_path / "lit")
  train_and_evaluate(cfg, lit)
  src_params, _ = checkpoint_io.load_params(source)
  lit_params, _ = checkpoint_io.load_params(lit)
  for k, v in traverse_util.flatten_dict(src_params["img"], sep="/").items():
    np.testing.assert_array_equal(traverse_util.flatten_dict(lit_params["img"], sep="/")[k], v, err_msg=k)
  src_txt = traverse_util.flatten_dict(src_params["txt"], sep="/")
  lit_txt = traverse_util.flatten_dict(lit_params["txt"], sep="/")
  assert any(not np.array_equal(src_txt[k], lit_txt[k]) for k in src_txt)  # text did train


def test_init_from_several_sources(finished_run, tmp_path):
  source, _ = finished_run
  cfg = tiny_config(frozen=("img/.*", "txt/.*"), total_steps=1)
  cfg.schedule.warmup_steps = 1
  cfg.init_from = dict(workdir=source, subtree="img", step=-1, sources=(f"{source}:txt",))
  run = str(tmp_path / "two")
  train_and_evaluate(cfg, run)
  src_params, _ = checkpoint_io.load_params(source)
  got, _ = checkpoint_io.load_params(run)
  for tower in ("img", "txt"):
    for k, v in traverse_util.flatten_dict(src_params[tower], sep="/").items():
      np.testing.assert_array_equal(traverse_util.flatten_dict(got[tower], sep="/")[k], v, err_msg=k)
  cfg.init_from = dict(workdir=source, subtree="img", step=-1, sources=(f"{source}:img/encoder",))
  with pytest.raises(ValueError, match=r"img/encoder/\S+ \(and \d+ more\) already comes from"):
    train_and_evaluate(cfg, str(tmp_path / "overlap"))
  cfg.init_from = dict(workdir="", subtree="", step=-1, sources=("runs-without-subtree",))
  with pytest.raises(ValueError, match="is not 'WORKDIR:SUBTREE"):
    train_and_evaluate(cfg, str(tmp_path / "bad"))


def test_init_from_bad_subtree(finished_run, tmp_path):
  source, _ = finished_run
  cfg = tiny_config()
  cfg.init_from = dict(workdir=source, subtree="vision", step=-1)
  with pytest.raises(ValueError, match="init_from subtree 'vision' matches nothing"):
    train_and_evaluate(cfg, str(tmp_path / "w"))
  assert workdir_listing(tmp_path / "w") is None  # no checkpoints/ made before the check


@pytest.mark.parametrize("change, message", [
    (dict(frozen=("img/.*",)), r"frozen changed from \[\] to \['img/\.\*'\]: \d+ param\(s\) trained in the "
                               r"checkpoint, frozen now \(img/"),
    (dict(optimizer=dict(tiny_config().optimizer.to_dict(), grad_clip_norm=0.0)),
     r"the optimizer state has another layout \(optimizer settings that differ: grad_clip_norm: 1\.0 -> 0\.0"),
])
def test_resume_with_another_state_layout_names_what_changed(finished_run, change, message):
  workdir, _ = finished_run
  before = _files(workdir)
  with pytest.raises(ValueError, match=r"cannot be resumed with this config:\n  " + message):
    train_and_evaluate(tiny_config(**change), workdir)
  assert _files(workdir) == before


def test_a_failing_evaluation_keeps_its_steps_checkpoint(tmp_path, monkeypatch):
  from vljax.evals.binding import BindingEvaluator

  def fail(self, runner, params):
    raise RuntimeError("evaluation failed")
  monkeypatch.setattr(BindingEvaluator, "__call__", fail)
  cfg = tiny_config(total_steps=2, evals=dict(binding=dict(every=2, num_examples=8)),
                    checkpoint=dict(every=2, keep=1, async_save=True))
  with pytest.raises(RuntimeError, match="evaluation failed"):
    train_and_evaluate(cfg, str(tmp_path / "w"))
  assert ckpt_lib.Checkpointer(str(tmp_path / "w"), every=2, keep=1).latest_step() == 2


def test_init_from_shape_mismatch_names_the_params(finished_run, tmp_path):
  source, _ = finished_run
  cfg = tiny_config(model=_embed_dim(24))
  cfg.init_from = dict(workdir=source, subtree="img,img_proj", step=-1)
  with pytest.raises(ValueError, match=r"does not fit this model:\n  img_proj/.*\[.*16\] vs model \[.*24\]"):
    train_and_evaluate(cfg, str(tmp_path / "w"))


def test_data_state_is_saved_per_host_and_older_shared_states_still_restore(tmp_path):
  import orbax.checkpoint as ocp

  state = {"w": np.arange(4, dtype=np.float32)}
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  meta = {"param_shapes": {}}
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path / "new"), every=1, keep=2, async_save=False)
  checkpointer.save(1, state, {"next_index": 7}, meta)
  assert (tmp_path / "new" / "checkpoints" / "1" / "data" / "process_0-of-1.json").exists()
  _, data_state, _ = checkpointer.restore(1, abstract, {})
  assert data_state == {"next_index": 7}
  checkpointer.close()
  # Earlier checkpoints hold one JSON item for every host, and their state was saved with Orbax's
  # standard handler (the same files as the PyTree handler's that vljax now configures).
  old_manager = ocp.CheckpointManager(ckpt_lib.checkpoint_dir(str(tmp_path / "legacy")),
                                      item_names=("state", "data", "meta"))
  old_manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                              data=ocp.args.JsonSave({"next_index": 5}), meta=ocp.args.JsonSave(meta)))
  old_manager.wait_until_finished()
  old_manager.close()
  legacy = ckpt_lib.Checkpointer(str(tmp_path / "legacy"), every=1, keep=2, async_save=False)
  restored, data_state, _ = legacy.restore(1, abstract, {})
  assert data_state == {"next_index": 5}
  np.testing.assert_array_equal(restored["w"], state["w"])
  legacy.close()
