"""Evaluators are checked against the model at start: a mismatch names the evaluator, the model and
what would work, before the workdir is touched; a model that cannot score says so in words, in
the runner, `vljax.load(...)` and `python -m vljax.predict`, instead of a shape assertion."""

import os

import jax
import numpy as np
import pytest
from flax import linen as nn

from conftest import tiny_config, workdir_listing
from vljax import evals, models
from vljax.data import tokenizers
from vljax.evals import requirements
from vljax.evals.requirements import EMBEDDINGS, GENERATION, IMAGE_FEATURES, LIKELIHOOD, MULTI_IMAGE, PROMPTED
from vljax.models.capabilities import MATCHING
from vljax.train import setup
from vljax.train.trainer import train_and_evaluate

TOK = tokenizers.get_tokenizer("shapes")
MU = dict(image=dict(variant="mu/8", posemb="sincos2d"), text=dict(variant="mu", max_len=48))
# A config per capability set: composable's contrastive head alone (CLIP), its decoder alone (CapPa),
# both (CoCa-like, "composable"), and the prompted models.
MODEL_CONFIGS = {
    "clip": dict(name="composable", **MU, contrastive=dict(embed_dim=16)),
    "cappa": dict(name="composable", image=MU["image"], decoder=dict(MU["text"], mode="parallel")),
    "lm": dict(name="lm", text=dict(variant="mu", max_len=48)),
    "llava": dict(name="llava", **MU),
    "flamingo": dict(name="flamingo", num_latents=4, **MU),
    "composable": dict(name="composable", **MU, contrastive=dict(embed_dim=16), decoder=dict(variant="mu", max_len=48)),
    "qformer": dict(name="qformer", **MU, num_queries=4, embed_dim=16),
    "prefix_lm": dict(name="prefix_lm", image=MU["image"], projector="linear",
                      lm=dict(vocab_size=128, width=32, depth=1, num_heads=2, head_dim=16, mlp_dim=64)),
    "seq2seq_lm": dict(name="seq2seq_lm", lm=dict(vocab_size=128, width=32, depth=1, num_heads=2, head_dim=16,
                                                  mlp_dim=64)),
}
DATA = {"lm": dict(format="lm", chunks=1), "llava": dict(format="vlm", chunks=1),
        "prefix_lm": dict(format="vlm", chunks=1),
        "flamingo": dict(format="vlm", chunks=2)}


def test_every_model_declares_what_it_can_do():
  assert {cfg["name"] for cfg in MODEL_CONFIGS.values()} == set(models.MODELS)
  caps = {name: requirements.model_capabilities(cls) for name, cls in models.MODELS.items()}
  tower = IMAGE_FEATURES  # every model with an image tower
  assert caps == {"lm": set(), "llava": {GENERATION, PROMPTED, tower},
                  "flamingo": {GENERATION, PROMPTED, MULTI_IMAGE, tower},
                  "composable": {EMBEDDINGS, LIKELIHOOD, GENERATION, MATCHING, tower},
                  "qformer": {EMBEDDINGS, MATCHING, tower},  # embeddings in query form
                  "prefix_lm": {GENERATION, PROMPTED, tower}, "seq2seq_lm": set()}
  # A composable config has the capabilities of the heads it builds.
  built = {name: requirements.model_capabilities(models.get_model(dict(cfg, text=dict(cfg["text"], vocab_size=128))
                                                                  if "text" in cfg else cfg))
           for name, cfg in MODEL_CONFIGS.items() if name in ("clip", "cappa", "composable")}
  assert built == {"clip": {EMBEDDINGS, tower}, "cappa": {LIKELIHOOD, GENERATION, tower},
                   "composable": {EMBEDDINGS, LIKELIHOOD, GENERATION, tower}}


def test_every_evaluator_names_what_it_needs():
  for cls in evals.EVALUATORS.values():
    assert cls.needs in (requirements.SCORES, GENERATION, PROMPTED, IMAGE_FEATURES), cls
    assert "every" in cls.settings_keys, cls


def _config(model, evals_cfg, **data):
  cfg = tiny_config(evals=evals_cfg)
  cfg.model = MODEL_CONFIGS[model]
  cfg.objectives = {"softmax_contrastive": 1.0} if model == "clip" else {"captioning": 1.0}
  cfg.data.update(dict(dict(max_len=24, **DATA.get(model, {})), **data))
  return cfg


# (model, evals, the message: evaluator, its need, the model, what would work)
MISMATCHES = [
    ("clip", dict(caption=dict(every=3, num_examples=8)),
     r"evals.caption \(captioning\) needs caption generation from an image; model 'composable' has "
     r"contrastive embeddings, an image tower's pooled features\. Valid: a model with it \(composable, flamingo, "
     r"llava, prefix_lm\), or drop evals.caption"),
    ("llava", dict(zeroshot=dict(every=3, num_examples=8)),
     r"evals.zeroshot \(scoring='auto'\) needs contrastive embeddings or caption log-likelihood given an image; "
     r"model 'llava' has .*Valid: a model with it \(composable, qformer\)"),
    ("flamingo", dict(retrieval=dict(every=3, num_examples=8)), r"evals.retrieval .*model 'flamingo'"),
    ("cappa", dict(binding=dict(every=3, num_examples=8, scoring="embedding")),
     r"evals.binding \(scoring='embedding'\) needs contrastive embeddings; model 'composable' has .*"
     r"Valid: evals.binding.scoring='likelihood' or a model with it \(composable, qformer\)"),
    ("clip", dict(zeroshot=dict(every=3, num_examples=8, scoring="likelihood")),
     r"evals.zeroshot \(scoring='likelihood'\) .*Valid: evals.zeroshot.scoring='embedding' or a model with it "
     r"\(composable\)"),
    ("composable", dict(vqa=dict(every=3, num_examples=8)),
     r"evals.vqa \(shots=\(0,\)\) needs generation continuing an <image> prompt; model 'composable'.*"
     r"\(flamingo, llava, prefix_lm\)"),
    ("llava", dict(vqa=dict(every=3, num_examples=8, shots=(0, 4))),
     r"evals.vqa \(shots=\(0, 4\)\) needs prompts with several images \(few-shot\); model 'llava' .*"
     r"Valid: evals.vqa.shots=\(0,\) or a model with it \(flamingo\)"),
    ("cappa", dict(caption=dict(every=3, num_examples=8, shots=(0,))),
     r"evals.caption \(shots=\(0,\)\) needs generation continuing an <image> prompt; model 'composable'"),
    ("lm", dict(caption=dict(every=3, num_examples=8)),
     r"evals.caption \(captioning\) .*model 'lm' has none of the evaluator capabilities"),
]


@pytest.mark.parametrize("model, evals_cfg, message", MISMATCHES, ids=lambda v: v if isinstance(v, str) and
                         len(v) < 12 else None)
def test_a_mismatch_fails_at_build_naming_evaluator_model_and_what_works(model, evals_cfg, message):
  with pytest.raises(ValueError, match=message):
    setup.build(_config(model, evals_cfg))


def test_a_mismatch_leaves_the_workdir_alone(tmp_path):
  cfg = _config("clip", dict(caption=dict(every=3, num_examples=8)))
  with pytest.raises(ValueError, match="evals.caption"):
    train_and_evaluate(cfg, str(tmp_path / "w"))
  assert workdir_listing(tmp_path / "w") is None


@pytest.mark.parametrize("model, evals_cfg", [
    ("composable", dict(zeroshot=dict(every=3, scoring="likelihood"), binding=dict(every=3), caption=dict(every=3))),
    ("llava", dict(vqa=dict(every=3, shots=(0,)), caption=dict(every=3))),
    ("flamingo", dict(vqa=dict(every=3, shots=(0, 4)), caption=dict(every=3, shots=(0, 2)))),
])
def test_what_a_model_can_do_passes(model, evals_cfg):
  requirements.check_evaluators({n: evals.get_evaluator(n) for n in evals_cfg}, evals_cfg, models.MODELS[model],
                                model, models.MODELS)


@pytest.mark.parametrize("model, data, message", [
    ("llava", dict(format="caption"), r"model 'llava' reads images through <image> tokens.*valid: data.format='vlm'"),
    ("flamingo", dict(format="lm"), r"model 'flamingo' .*data.format='lm' has none"),
    ("llava", dict(chunks=2), r"model 'llava' splices exactly one image .*data.chunks=2.*valid: data.chunks=1"),
])
def test_image_prompted_models_need_vlm_data(model, data, message):
  with pytest.raises(ValueError, match=message):
    setup.build(_config(model, {}, **data))


# ---- a model that cannot score, asked to score

def _zero_params(model, cfg):
  """Params of the right shapes, nothing computed: every error below comes before the model runs."""
  from vljax.train import state as state_lib
  inputs = state_lib.dummy_inputs(cfg, 1)
  shapes = jax.eval_shape(lambda rng: nn.unbox(model.init(rng, **inputs)["params"]), jax.random.PRNGKey(0))
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


@pytest.fixture(scope="module")
def llava_workdir(tmp_path_factory):
  """A LLaVA workdir (config.json, a step-0 checkpoint of its initial params), as vljax.load reads it."""
  from vljax import metrics as metrics_lib
  from vljax import checkpoint_io
  from vljax.train import checkpoint as ckpt_lib
  cfg = _config("llava", {})
  parts = setup.build(cfg)
  params = _zero_params(parts.model, cfg)
  workdir = str(tmp_path_factory.mktemp("llava"))
  metrics_lib.write_text(workdir, "config.json", cfg.to_json_best_effort(indent=2))
  checkpointer = ckpt_lib.Checkpointer(workdir, every=0, keep=1, async_save=False)
  checkpointer.save(0, {"params": params}, {}, {"model_name": "llava", "param_shapes": checkpoint_io.param_shapes(params)},
                    force=True)
  checkpointer.close()
  return workdir


SCORING_ERROR = (r"image-text scoring \(scoring='auto'\) needs a model with contrastive embeddings or caption "
                 r"log-likelihood given an image; LLaVA has caption generation from an image, an image tower.s pooled features, generation continuing")


def test_load_score_and_zero_shot_on_a_model_that_cannot_score_say_so(llava_workdir):
  import vljax
  model = vljax.load(llava_workdir)
  image = np.zeros((32, 32, 3), np.uint8)
  with pytest.raises(ValueError, match=SCORING_ERROR):
    model.score(image, ["a red circle"])
  with pytest.raises(ValueError, match=SCORING_ERROR):
    model.zero_shot(image, ["red circle", "blue star"])


def test_predict_classes_on_a_model_that_cannot_score_exits_2(llava_workdir, tmp_path, capsys):
  from PIL import Image
  from vljax import predict
  path = str(tmp_path / "x.png")
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path)
  assert predict.main(["--workdir", llava_workdir, "--images", path, "--classes", "red circle,blue star"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: image-text scoring") and "Traceback" not in err


def test_generate_on_llava_without_images_is_an_error_not_an_assertion():
  from vljax import decode as decode_lib
  from vljax.data import prompts
  from vljax.inference.runner import ModelRunner
  from vljax.parallel.mesh import make_mesh
  cfg = _config("llava", {})
  parts = setup.build(cfg)
  params = _zero_params(parts.model, cfg)
  ids, lengths = prompts.prompt_ids(TOK, [[prompts.caption_chunk()]], 8)
  mesh = make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    runner = ModelRunner(parts.model, mesh, 1, TOK)
    options = decode_lib.DecodeOptions(max_len=2)
    with pytest.raises(ValueError, match=r"LLaVA reads images through the prompts' <image> tokens"):
      runner.generate(params, None, ids, lengths, options)
    # No <image> and no image: today the image tokens would overwrite the prompt's BOS.
    text_only, text_lengths = prompts.prompt_ids(TOK, [[prompts.caption_chunk(image=False)]], 8)
    with pytest.raises(ValueError, match=r"LLaVA splices exactly one image into a prompt; got 0"):
      runner.generate(params, np.zeros((1, 0, 32, 32, 3), np.float32), text_only, text_lengths, options)


def test_vlm_batches_need_exactly_one_image_token_per_image():
  from vljax.data import formats
  world_example = dict(image=np.zeros((32, 32, 3), np.uint8), caption="a red circle")
  collate = formats.get_format("vlm").collate(formats.CollateSettings(TOK, 24))
  assert collate([[world_example]])["text"].shape == (1, 24)
  # A caption holding the literal token gives a sequence two <image>s for one image: LLaVA would
  # splice at the first and the model would never see where the second points.
  with pytest.raises(ValueError, match=r"sequence 1 has 2 <image> tokens for its 1 image\(s\)"):
    collate([[world_example], [dict(world_example, caption="a <image> of a red circle")]])
