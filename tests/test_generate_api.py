"""Prompted generation in the public API: vljax.load(RUN).generate(images, prompts, ...) and
`python -m vljax.predict --prompt`, on random-weight LLaVA, Flamingo and LM runs: the same tokens as
the evaluators' path (ModelRunner.generate on prompt ids), "<image>" placement, bad input."""

import pytest

import vljax
from conftest import tiny_config
from random_workdirs import write_random_workdir
from vljax import decode as decode_lib, predict
from vljax.data import prompts, shapes

IMAGE = dict(variant="mu/8", posemb="sincos2d")


def _config(model, chunks):
  cfg = tiny_config(evals={})
  cfg.model = model
  cfg.objectives = {"captioning": 1.0}
  cfg.data.update(format="vlm" if chunks else "lm", chunks=max(chunks, 1), max_len=48, image_size=16)
  return cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("generate")
  configs = {
      "llava": _config(dict(name="llava", image=IMAGE, text=dict(variant="mu", max_len=96), projector="linear"), 1),
      "flamingo": _config(dict(name="flamingo", image=IMAGE, text=dict(variant="mu", max_len=48), num_latents=4), 2),
      "lm": _config(dict(name="lm", text=dict(variant="mu", max_len=48)), 0),
  }
  return {name: write_random_workdir(str(root / name), cfg, seed=3) for name, cfg in configs.items()}


def _images(n, size=16):
  world = shapes.ShapesWorld(seed=0, image_size=size)
  return [world.example(i, split="eval")["image"] for i in range(n)]


def test_llava_generate_equals_the_evaluators_path(runs):
  model = vljax.load(runs["llava"])
  images = _images(2)
  questions = ["question: what color is the circle? answer:", "<image> question: is there a star? answer:"]
  got = model.generate(images, questions, max_new_tokens=5)
  # By hand: "<image>" in front of the first prompt, the runner the VQA evaluator calls.
  ids, lengths = prompts.prompt_ids(model.tokenizer, [[("<image> " + questions[0], "")], [(questions[1], "")]], 48)
  want = model.runner.generate(model.params, model._images(images)[:, None], ids[:, :int(lengths.max())], lengths,
                               decode_lib.DecodeOptions(method="greedy", max_len=5))
  assert got == [w.split(prompts.EOC)[0] for w in want] and all(isinstance(g, str) for g in got)
  assert model.generate(images[0], questions[0], max_new_tokens=5) == got[:1]  # one image, one prompt
  # Beam search and sampling reach the same decoder.
  assert len(model.generate(images, questions, method="beam", beam_size=2, max_new_tokens=4)) == 2
  sampled = [model.generate(images, questions, method="sample", top_p=0.9, max_new_tokens=4, seed=s) for s in (0, 0)]
  assert sampled[0] == sampled[1]


def test_llava_continues_a_prompt_that_ends_with_its_image(runs):
  """With "<image>" last (or a prompt that is only the image), the first token is predicted from the
  image's last token, which no re-fed "<image>" id overwrites: greedy with the KV cache equals greedy
  recomputing the whole prefix at every step."""
  import jax
  import numpy as np
  model = vljax.load(runs["llava"])
  images = _images(2)
  texts = ["question: what color is the circle? answer: <image>", ""]  # "" gets "<image> " in front
  got = model.generate(images, texts, max_new_tokens=5)
  memory = model.model.apply({"params": model.params}, model._images(images)[:, None], method="encode_image")["memory"]
  # Teacher-forced logits over a fixed 20 ids (one compile): causal, so the padding after a prefix is not read.
  logits_of = jax.jit(lambda mem, ids: model.model.apply({"params": model.params}, mem, ids, method="caption_logits"))
  for i, text in enumerate(texts):
    ids, lengths = prompts.prompt_ids(model.tokenizer, [[(text or "<image> ", "")]], 20)
    n = int(lengths[0])
    assert ids[0, n - 1] == model.tokenizer.image_id  # the image is last
    new = []
    for _ in range(5):
      logits = np.array(logits_of(memory[i:i + 1], ids)[0, n - 1])
      if not new:  # decoding's min_len=1: no EOS as the first token
        logits[model.tokenizer.eoc_id] = -np.inf
      new.append(int(np.argmax(logits)))
      ids[0, n], n = new[-1], n + 1
      if new[-1] == model.tokenizer.eoc_id:
        break
    assert got[i].strip() == model.tokenizer.decode(np.asarray([new]))[0].split(prompts.EOC)[0].strip()


def test_flamingo_takes_interleaved_prompts_with_several_images(runs):
  model = vljax.load(runs["flamingo"])
  images = _images(4)
  few_shot = "<image> question: what shape? answer: circle<eoc><image> question: what shape? answer:"
  out = model.generate([images[:2], images[2:]], [few_shot, few_shot], max_new_tokens=4)
  assert len(out) == 2
  with pytest.raises(ValueError, match=r"prompt 0 has 2 <image> tokens but 1 images are given per prompt"):
    model.generate(images[:2], [few_shot, few_shot], max_new_tokens=4)
  with pytest.raises(ValueError, match=r"every prompt needs the same number \(>= 1\) of images; got counts \[1, 2\]"):
    model.generate([images[:1], images[1:3]], [few_shot, few_shot])


def test_a_language_model_continues_text(runs):
  model = vljax.load(runs["lm"])
  assert len(model.generate(None, ["question: what color is the circle? answer:"], max_new_tokens=3)) == 1
  with pytest.raises(ValueError, match=r"is a text-only language model: pass images=None"):
    model.generate(_images(1), "caption:")


@pytest.mark.parametrize("kwargs, message", [
    (dict(images=None, prompts="caption:"), r"reads images through its prompts' <image>: generate needs images"),
    (dict(prompts=[]), r"prompts must be a string or a non-empty list of strings"),
    (dict(prompts=["a", "b"]), r"1 image entries for 2 prompts"),
    (dict(prompts="caption:", max_new_tokens=0), r"max_new_tokens=0 is invalid; valid: a whole number >= 1"),
    (dict(prompts="caption:", max_len=4), r"the continuation's length is max_new_tokens, not max_len"),
    (dict(prompts="caption:", method="nucleus"), r"method"),
])
def test_bad_generate_calls_name_the_value(runs, kwargs, message):
  model = vljax.load(runs["llava"])
  kwargs.setdefault("images", _images(1))
  with pytest.raises(ValueError, match=message):
    model.generate(**kwargs)


def test_predict_prompt_prints_one_answer_per_image(runs, tmp_path, capsys):
  from PIL import Image
  paths = []
  for i, image in enumerate(_images(2)):
    paths.append(str(tmp_path / f"{i}.png"))
    Image.fromarray(image).save(paths[-1])
  assert predict.main(["--workdir", runs["llava"], "--images", *paths, "--prompt",
                       "question: what color is the circle? answer:", "--max_len", "4"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert [line.split("\t")[0] for line in lines] == paths and all("\tanswer:" in line for line in lines)
  # A prompt with several <image> takes all the images at once (Flamingo's interleaved prompts).
  assert predict.main(["--workdir", runs["flamingo"], "--images", *paths, "--prompt",
                       "<image> caption: a<eoc><image> caption:", "--max_len", "3"]) == 0
  assert len(capsys.readouterr().out.strip().splitlines()) == 1
  assert predict.main(["--workdir", runs["lm"], "--prompt", "caption:", "--max_len", "3"]) == 0
  assert capsys.readouterr().out.startswith("answer:")
  assert predict.main(["--workdir", runs["lm"]]) == 2
  assert "--images" in capsys.readouterr().err
