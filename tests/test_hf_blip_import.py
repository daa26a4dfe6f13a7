"""Importing Hugging Face BLIP (BlipForImageTextRetrieval, BlipForConditionalGeneration): random-weight tiny
transformers models (hf_reference.py) through `python -m vljax.convert` and `vljax.load`, against transformers:
ITC embeddings, ITM logits through ModelRunner (CapFilt's filter path), teacher-forced caption logits and greedy
captions through ModelRunner.caption; then `python -m vljax.evaluate` and `python -m vljax.capfilt` on the
written workdirs, and bad folders."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import vljax  # noqa: E402
from hf_reference import (BLIP_IMAGE, BLIP_LEN, BLIP_VOCAB, blip_ids, hf_blip, hf_blip_caption_outputs,  # noqa: E402
                          hf_blip_retrieval_outputs, pixels, relative_error, write_blip_tokenizer)
from vljax import convert  # noqa: E402
from vljax import decode as decode_lib  # noqa: E402
from vljax.convert.__main__ import main as convert_main  # noqa: E402
from vljax.data import images as images_lib  # noqa: E402

TOLERANCE = 1e-4  # float32: max relative error of an embedding / a logit row
NEW_TOKENS = 8


def _imported(tmp_path_factory, architecture: str) -> dict:
  """transformers' model, its folder (weights, config, tokenizer.json), the CLI's workdir loaded with vljax.load."""
  root = tmp_path_factory.mktemp(architecture)
  model = hf_blip(architecture)
  folder = root / "hf"
  model.save_pretrained(folder)
  write_blip_tokenizer(folder)
  workdir = root / "workdir"
  assert convert_main(["--checkpoint", str(folder), "--workdir", str(workdir)]) == 0
  return dict(model=model, folder=folder, workdir=workdir, loaded=vljax.load(str(workdir)),
              pixels=pixels(4, BLIP_IMAGE), ids=blip_ids(BLIP_LEN))


@pytest.fixture(scope="module")
def retrieval(tmp_path_factory):
  return _imported(tmp_path_factory, "BlipForImageTextRetrieval")


@pytest.fixture(scope="module")
def captioning(tmp_path_factory):
  return _imported(tmp_path_factory, "BlipForConditionalGeneration")


def _max_row_error(ours: np.ndarray, reference: np.ndarray) -> float:
  return relative_error(ours.reshape(-1, ours.shape[-1]), reference.reshape(-1, reference.shape[-1]))


@pytest.mark.slow
@pytest.mark.cross_path
def test_retrieval_embeddings_and_itm_logits_match_transformers(retrieval):
  loaded, ids = retrieval["loaded"], retrieval["ids"]
  ref = hf_blip_retrieval_outputs(retrieval["model"], retrieval["pixels"], ids)
  images = images_lib.normalize(retrieval["pixels"], loaded.cfg.data.normalization)  # [-1, 1]: the conv re-expressed
  with jax.set_mesh(loaded.mesh):
    img, txt = loaded.runner.images(loaded.params, images), loaded.runner.texts(loaded.params, ids)
    memory = loaded.runner.fusion_memory(loaded.params, images)
    pairs = np.arange(len(ids))
    itm = loaded.runner.pair_itm_logits(loaded.params, memory, ids, pairs, pairs)
  errors = dict(img=relative_error(img, ref["img"]), txt=relative_error(txt, ref["txt"]),
                itm=_max_row_error(itm, ref["itm"]))
  print(f"BLIP retrieval: max relative error image {errors['img']:.2e}, text {errors['txt']:.2e}, "
        f"ITM logits {errors['itm']:.2e}; cosines max abs {np.abs(img @ txt.T - ref['cosines']).max():.1e}")
  assert max(errors.values()) < TOLERANCE, errors
  np.testing.assert_allclose(img @ txt.T, ref["cosines"], atol=TOLERANCE)
  assert memory.shape == (4, 1 + (BLIP_IMAGE // 8) ** 2, 48)  # [CLS] and the patches: BLIP's image embeddings
  np.testing.assert_array_equal(np.argmax(itm, -1), np.argmax(ref["itm"], -1))


@pytest.mark.slow
@pytest.mark.cross_path
def test_caption_logits_and_greedy_captions_match_transformers(captioning):
  loaded, ids = captioning["loaded"], captioning["ids"]
  ref = hf_blip_caption_outputs(captioning["model"], captioning["pixels"], ids, NEW_TOKENS)
  images = images_lib.normalize(captioning["pixels"], loaded.cfg.data.normalization)
  model, params = loaded.model, loaded.params

  @jax.jit
  def caption_logits(params, images, ids):
    memory = model.apply({"params": params}, images, method="encode_image")["memory"]
    return model.apply({"params": params}, memory, ids, method="caption_logits")

  with jax.set_mesh(loaded.mesh):
    logits = np.asarray(caption_logits(params, jnp.asarray(images), jnp.asarray(ids)))
    captions, _ = loaded.runner.caption(params, images, decode_lib.DecodeOptions(max_len=NEW_TOKENS, min_len=0))
  real = ids != 0  # transformers masks padding; vljax's causal rows never see it
  error = _max_row_error(logits[real][:, :BLIP_VOCAB], ref["logits"][real])
  print(f"BLIP captioning: max relative error of the teacher-forced logits {error:.2e}")
  assert error < TOLERANCE
  # The columns BLIP lacks hold the mean column: never the argmax, as in transformers.
  np.testing.assert_array_equal(np.argmax(logits[real], -1), np.argmax(ref["logits"][real], -1))
  assert captions == loaded.tokenizer.decode(ref["greedy"]), (captions, ref["greedy"])
  assert any(captions)


def test_cli_workdirs_name_the_blip_heads_objectives_and_tokenizer(retrieval, captioning):
  cfg = json.loads((retrieval["workdir"] / "config.json").read_text())
  model = cfg["model"]
  assert (model["image"]["cls_in_tokens"], model["text"]["pool"], model["text"]["norm_position"]) == (True, "first",
                                                                                                      "post")
  assert model["fusion"]["share"] == "none" and model["contrastive"]["embed_dim"] == 32
  assert cfg["objectives"] == {"softmax_contrastive": 1.0, "itm": 1.0}
  assert cfg["data"]["tokenizer"] == f"hf:{retrieval['folder'] / 'tokenizer.json'}"
  assert (cfg["data"]["max_len"], cfg["data"]["image_size"], cfg["data"]["normalization"]) == (BLIP_LEN, BLIP_IMAGE,
                                                                                               "siglip")
  tok = retrieval["loaded"].tokenizer
  np.testing.assert_array_equal(tok.encode(["W5 w17, w40"], 8)[0], [2, 5, 17, 1, 40, 3, 0, 0])  # "," is [UNK]
  cap = json.loads((captioning["workdir"] / "config.json").read_text())
  assert cap["objectives"] == {"captioning": 1.0} and "contrastive" not in cap["model"]
  assert cap["model"]["decoder"]["head_transform"] is True
  params = captioning["loaded"].params
  words = captioning["model"].text_decoder.bert.embeddings.word_embeddings.weight.detach().numpy()
  table = np.asarray(params["dec_embed"]["embedding"]["embedding"])
  np.testing.assert_array_equal(table[2], words[98])  # the BOS ([CLS]) row feeds BLIP's [DEC]
  np.testing.assert_array_equal(table[5:98], words[5:98])


# ---- bad input ---------------------------------------------------------------------------------------

def _edited_folder(source, tmp_path, config_changes=None, drop=(), reshape=None):
  """A copy of a BLIP folder with config.json keys changed and tensors dropped or replaced."""
  import safetensors.numpy
  folder = tmp_path / "edited"
  shutil.copytree(source, folder)
  config = json.loads((folder / "config.json").read_text())
  for key, value in (config_changes or {}).items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  (folder / "config.json").write_text(json.dumps(config))
  tensors = safetensors.numpy.load_file(str(folder / "model.safetensors"))
  for name in drop:
    del tensors[name]
  for name, array in (reshape or {}).items():
    tensors[name] = array
  safetensors.numpy.save_file(tensors, str(folder / "model.safetensors"))
  return str(folder)


def test_bad_blip_folders_are_errors_naming_the_problem(retrieval, tmp_path):
  source = retrieval["folder"]
  cases = [
      (dict(config_changes={"architectures": ["BlipForQuestionAnswering"]}),
       r"architecture 'BlipForQuestionAnswering' is not supported; valid: \['BlipForConditionalGeneration', "
       r"'BlipForImageTextRetrieval'\]"),
      (dict(config_changes={"text_config.position_embedding_type": "relative_key"}),
       r"position_embedding_type 'relative_key' is not supported; valid: 'absolute'"),
      (dict(config_changes={"text_config.hidden_act": "swish"}), r"Unknown hidden_act 'swish'.*valid"),
      (dict(drop=["itm_head.weight"]), r"no tensor 'itm_head.weight'"),
      (dict(drop=["text_encoder.encoder.layer.1.crossattention.self.query.weight"]),
       r"crossattention.self.query.weight; BLIP's text transformers cross-attend"),
      (dict(reshape={"text_proj.weight": np.zeros((16, 64), np.float32),
                     "text_proj.bias": np.zeros(16, np.float32)}), r"vision_proj gives 32 dims but text_proj 16"),
  ]
  for i, (edit, message) in enumerate(cases):
    folder = _edited_folder(source, tmp_path / str(i), **edit)
    with pytest.raises(ValueError, match=message):
      convert.import_checkpoint(folder)
  with pytest.raises(ValueError, match=r"model_type 'clip' is not 'blip'"):
    convert.import_checkpoint(_edited_folder(source, tmp_path / "clip", {"model_type": "clip"}), format="hf_blip")
  with pytest.raises(ValueError, match=r"hf_blip imports take none"):
    convert.import_checkpoint(str(source), config="configs/clip_shapes.py")
  # the CLI: a message and exit status 2, nothing written
  assert convert_main(["--checkpoint", _edited_folder(source, tmp_path / "cli", drop=["vision_proj.bias"]),
                       "--workdir", str(tmp_path / "w")]) == 2
  assert not (tmp_path / "w").exists()


def test_evaluate_and_capfilt_run_on_the_imported_workdirs(retrieval, captioning, tmp_path, capsys):
  from vljax import evaluate
  from vljax.capfilt import __main__ as capfilt_cli, noisy_shapes
  assert evaluate.main(["--workdir", str(retrieval["workdir"]), "--evals", "retrieval",
                        "--config.evals.retrieval.num_examples=8"]) == 0
  row = json.loads(capsys.readouterr().out)
  assert 0.0 <= row["eval/retrieval/i2t_r1"] <= 1.0
  noisy_shapes.write(str(tmp_path / "web"), num_images=4, noise=0.5, image_size=BLIP_IMAGE, progress=False)
  output = tmp_path / "capfilt"
  assert capfilt_cli.main(["--captioner", str(captioning["workdir"]), "--filter", str(retrieval["workdir"]),
                           "--input", str(tmp_path / "web"), "--output", str(output),
                           "--captions_per_image", "1", "--max_len", "6", "--batch_size", "4", "--no_progress"]) == 0
  summary = json.loads((output / "summary.json").read_text())
  assert summary["complete"] and summary["images"] == 4
  # one web caption and one sampled caption per image, each kept or removed by the imported ITM head
  assert {k: sum(c.values()) for k, c in summary["counts"].items()} == {"web": 4, "synthetic": 4}
