"""Decoder transfer (vljax/evals/decoder_transfer.py): a fresh decoder trained on a frozen encoder's
image tokens learns, never touches the encoder, is deterministic given its seed, is scored with the
official VQA rule, rejects bad settings at build, and runs from `python -m vljax.evaluate`.

One random tiny CLIP (tiny_config's towers), written as an imported workdir; every test reads the one
transfer the module fixture runs, so each program (tower, init, train step, decoding) compiles once.
"""

import copy
import json

import jax
import numpy as np
import pytest
from flax import linen as nn

from conftest import tiny_config
from vljax import evals, evaluate, models
from vljax.convert import Converted, write_workdir
from vljax.data import tokenizers
from vljax.evals import requirements, transfer_training as training, vqa_metrics
from vljax.inference.runner import ModelRunner
from vljax.parallel.mesh import make_mesh
from vljax.train import setup, state as state_lib

SETTINGS = dict(variant="mu", steps=40, batch_size=32, lr=3e-3, num_train_examples=128, num_eval_examples=32)
DECODER_PARAMS = {"memory_norm", "embed", "dec"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """The tiny CLIP built from a config naming decoder_transfer (as training builds it, evaluator
  included), its random params, an imported workdir holding them, and one transfer's results."""
  cfg = tiny_config(evals=dict(decoder_transfer=dict(every=0, **SETTINGS)))
  parts = setup.build(cfg)
  init = jax.jit(lambda key: parts.model.init(key, **state_lib.dummy_inputs(cfg, 1))["params"])
  params = jax.device_get(nn.unbox(init(jax.random.key(0, impl="rbg"))))
  workdir = str(tmp_path_factory.mktemp("imported"))
  data = dict(image_size=cfg.data.image_size, max_len=cfg.data.max_len, tokenizer=cfg.data.tokenizer,
              normalization=cfg.data.normalization, format="caption", source="random init")
  write_workdir(Converted(cfg.model.to_dict(), params, data), workdir, config=cfg)
  mesh = make_mesh({"data": -1})  # as vljax.evaluate's
  runner = ModelRunner(parts.model, mesh, cfg.eval_batch_size, parts.tokenizer)
  evaluator = parts.evaluators["decoder_transfer"]
  before = jax.tree.map(np.copy, params)
  with jax.set_mesh(mesh):
    out = evaluator(runner, params)
  return dict(params=params, before=before, workdir=workdir, mesh=mesh, runner=runner, evaluator=evaluator,
              out=out)


def _memory(run, images):
  with jax.set_mesh(run["mesh"]):
    return run["evaluator"].image_memory(run["runner"], run["params"], images)[0]


def test_the_transfer_learns(run):
  """The train loss starts near log(vocab) (a uniform guess) and ends far below it; the trained
  decoder's captions and answers beat those of the same decoder untrained (0 steps)."""
  ev, out = run["evaluator"], run["out"]
  log_vocab = np.log(ev.spec.vocab_size)
  for task in ("captioning", "vqa"):
    assert abs(ev.losses[task][0] - log_vocab) < 0.5, ev.losses[task][:3]
  assert out["caption_loss"] < 0.6 * log_vocab and out["vqa_loss"] < 0.6 * log_vocab, out
  assert out["memory_tokens"] == 16 and out["pooled_memory"] == 0  # 32 px / patch 8: 4 x 4 tokens
  untrained = {}
  for task in ev.tasks:
    memory = _memory(run, task.eval_images)
    with training.one_device_mesh():
      params = training.init_fn(ev.spec)(jax.random.key(ev.seed, impl="rbg"), memory[:1], task.train_ids[:1])
      answers = training.greedy_answers(ev.spec, params, memory, task.prompt_ids, task.prompt_lengths,
                                        ev.answer_len, ev.tokenizer)
    untrained.update(task.score(answers))
  assert out["cider"] > untrained["cider"] + 0.02 and out["bleu4"] > untrained["bleu4"], (out, untrained)
  assert out["vqa_acc"] > untrained["vqa_acc"], (out, untrained)


def test_the_encoder_is_untouched_and_never_a_step_input(run, monkeypatch):
  """The train step's inputs are the decoder's params, their optimizer state and the frozen tokens
  (with ids, mask and batch rows): no encoder param reaches it, so none gets a gradient."""
  jax.tree.map(np.testing.assert_array_equal, run["params"], run["before"])
  ev, task = run["evaluator"], run["evaluator"].tasks[0]
  calls = []
  compiled = training.train_step_fn(ev.spec, ev.train)

  def recording(spec, train):
    def step(*args):
      calls.append(args)
      return compiled(*args)
    return step
  monkeypatch.setattr(training, "train_step_fn", recording)
  memory = _memory(run, task.train_images)
  with training.one_device_mesh():
    params, _ = training.train_decoder(ev.spec, ev.train, memory, task.train_ids, task.train_mask, ev.seed)
  assert len(calls) == ev.train.steps
  dec_params, opt_state, *data = calls[0]
  assert set(dec_params) == DECODER_PARAMS and set(params) == DECODER_PARAMS
  assert [np.shape(x) for x in data] == [memory.shape, task.train_ids.shape, task.train_mask.shape,
                                         (ev.train.batch_size,)]
  # Every input of the compiled step is one of those: the decoder's params, adam's two moments of
  # them and its step count, and the four data arrays.
  jaxpr = jax.make_jaxpr(compiled)(*calls[0])
  assert len(jaxpr.in_avals) == len(jax.tree.leaves((dec_params, opt_state))) + 4
  moments = [np.shape(x) for x in jax.tree.leaves(opt_state) if np.ndim(x)]
  assert sorted(moments) == sorted(2 * [np.shape(x) for x in jax.tree.leaves(dec_params)])


def test_deterministic_given_the_seed(run):
  ev, task = run["evaluator"], run["evaluator"].tasks[1]
  memory = _memory(run, task.train_images)
  with training.one_device_mesh():
    trained = [training.train_decoder(ev.spec, ev.train, memory, task.train_ids, task.train_mask, seed)
               for seed in (ev.seed, ev.seed, ev.seed + 1)]
  np.testing.assert_array_equal(trained[0][1], ev.losses["vqa"])  # as inside the evaluator
  np.testing.assert_array_equal(trained[1][1], trained[0][1])
  jax.tree.map(np.testing.assert_array_equal, trained[1][0], trained[0][0])
  assert not np.array_equal(trained[2][1], trained[0][1])


def _official(prediction, references):
  """The VQA v2 rule written out: min(matches among the other references / 3, 1), averaged over the
  leave-one-out subsets; one reference is exact match."""
  norm = vqa_metrics.normalize_answer
  same = [norm(r) == norm(prediction) for r in references]
  if len(references) == 1:
    return float(same[0])
  return np.mean([min((sum(same) - same[i]) / 3, 1.0) for i in range(len(references))])


def test_vqa_accuracy_is_the_official_rule_on_the_decoded_answers(run):
  ev, out = run["evaluator"], run["out"]
  task = next(t for t in ev.tasks if t.name == "vqa")
  answers = ev.predictions["vqa"]
  assert len(answers) == SETTINGS["num_eval_examples"] and all("<eoc>" not in a for a in answers)
  direct = [_official(a, [r]) for a, r in zip(answers, task.answers)]  # one answer per shapes question
  assert out["vqa_acc"] == pytest.approx(np.mean(direct)) and out["vqa_acc"] > 0
  for qtype in set(task.types):
    assert out[f"vqa_acc_{qtype}"] == pytest.approx(np.mean([d for d, t in zip(direct, task.types) if t == qtype]))
  # Ten references per question, 0 to 4 of them the decoded answer: 0, 0.3, 0.6, 0.9, 1.0 each.
  tens = [[a] * (i % 5) + ["not an answer"] * (10 - i % 5) for i, a in enumerate(answers)]
  ten_references = copy.copy(task)
  ten_references.answers = tens
  scored = ten_references.score(answers)
  assert scored["vqa_acc"] == pytest.approx(np.mean([_official(a, r) for a, r in zip(answers, tens)]))
  assert _official("x", ["x"] * 3 + ["y"] * 7) == pytest.approx(0.9)


def _build(data=None, **settings):
  return evals.get_evaluator("decoder_transfer")(settings, tokenizer=tokenizers.get_tokenizer("shapes"), max_len=12,
                                                 data=dict(world_seed=0, image_size=32, **(data or {})))


@pytest.mark.parametrize("settings, match", [
    (dict(tasks="retrieval"), r"evals.decoder_transfer.tasks='retrieval' is invalid; valid: one of "
                              r"\['captioning', 'vqa'\]"),
    (dict(tasks=["vqa", "vqa"]), r"tasks=\['vqa', 'vqa'\] is invalid"),
    (dict(tasks=[]), r"tasks=\[\] is invalid"),
    (dict(steps=0), r"evals.decoder_transfer.steps=0 is invalid; valid: an int >= 1"),
    (dict(batch_size=-4), r"batch_size=-4 is invalid; valid: an int >= 1"),
    (dict(num_train_examples=2.5), r"num_train_examples=2.5 is invalid"),
    (dict(lr=0.0), r"lr=0.0 is invalid; valid: a finite number > 0"),
    (dict(variant="huge"), r"variant='huge' is unknown; valid: \['mu', 'shapes-64', 'S'"),
    (dict(memory="cls"), r"memory='cls' is unknown; valid: \['tokens', 'pooled'\]"),
    (dict(seed=-1), r"seed=-1 is invalid; valid: an int >= 0"),
    (dict(shots=5), r"unknown key\(s\) \['shots'\]"),
    (dict(data=dict(caption_noise=1.0)), r"data.caption_noise=1.0 makes every one noise; valid: < 1, or "
                                         r"tasks=\['vqa'\]"),
])
def test_bad_settings_fail_at_build(settings, match):
  with pytest.raises(ValueError, match=match):
    _build(**settings)


def test_a_model_without_an_image_tower_fails_at_start():
  with pytest.raises(ValueError, match=r"evals.decoder_transfer \(frozen image features\) needs an image tower's "
                                       r"pooled features; model 'lm' has none.*Valid: a model with it \(composable, "
                                       r"flamingo, llava, prefix_lm, qformer\)"):
    requirements.check_evaluators({"decoder_transfer": evals.get_evaluator("decoder_transfer")},
                                  {"decoder_transfer": {}}, models.MODELS["lm"], "lm", models.MODELS)


def test_a_tower_without_tokens_gives_its_pooled_vector_as_one_token(run, caplog):
  class NoTokens:
    def image_tokens(self, params, images):
      return np.zeros((len(images), 0, 8), np.float32)

    def image_features(self, params, images):
      return np.ones((len(images), 8), np.float32)
  memory, pooled = run["evaluator"].image_memory(NoTokens(), None, np.zeros((3, 32, 32, 3), np.float32))
  assert memory.shape == (3, 1, 8) and pooled
  assert "gives no tokens" in caplog.text


def test_runs_from_the_evaluate_command_on_an_imported_workdir(run, capsys):
  overrides = [f"--config.evals.decoder_transfer.{k}={v!r}" for k, v in SETTINGS.items()]
  assert evaluate.main(["--workdir", run["workdir"], "--evals", "decoder_transfer", *overrides]) == 0
  printed = json.loads(capsys.readouterr().out)
  with open(f"{run['workdir']}/metrics.jsonl") as f:
    row = json.loads(f.readlines()[-1])
  assert row == printed and row["step"] == 0
  # The same params, settings and seed as the fixture's transfer: the same numbers.
  assert {k: v for k, v in row.items() if k != "step"} == {f"eval/decoder_transfer/{k}": v
                                                          for k, v in run["out"].items()}
