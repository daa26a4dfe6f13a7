"""Inference API on a random-weight CoCa run: vljax.load, its methods, and `python -m vljax.predict`."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import vljax
from conftest import tiny_config
from random_workdirs import write_random_workdir
from vljax import predict
from vljax.data import shapes


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A CoCa run with random weights (what is tested is the API, not what training learned)."""
  path = str(tmp_path_factory.mktemp("coca"))
  cfg = tiny_config(evals={})
  cfg.model = dict(name="coca", embed_dim=16, image=dict(variant="mu/8", posemb="sincos2d"),
                   text=dict(variant="mu"), num_queries=4)
  cfg.objectives = {"softmax_contrastive": 1.0, "captioning": 2.0}
  return write_random_workdir(path, cfg, seed=0)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  """Two shapes images as PNG files, one saved at another size (the predictor resizes it)."""
  folder = tmp_path_factory.mktemp("images")
  world = shapes.ShapesWorld(seed=0, image_size=32)
  paths = []
  for i, size in enumerate((32, 48)):
    path = str(folder / f"{i}.png")
    Image.fromarray(world.example(i, split="eval")["image"]).resize((size, size)).save(path)
    paths.append(path)
  return paths


# Not `cross_path`: its float checks hold within one program (unit norms, softmax sums, the same
# pixels through the same program), not between two code paths.
def test_load_and_every_method(workdir, images):
  model = vljax.load(workdir)
  assert model.step == 0
  arrays = np.stack([np.asarray(Image.open(p).convert("RGB").resize((32, 32))) for p in images])
  z_files, z_arrays = model.encode_image(images), model.encode_image(arrays)
  assert z_files.shape == (2, 16)
  # float32 L2 normalisation then a float32 norm: a few roundings of a 128-term sum
  np.testing.assert_allclose(np.linalg.norm(z_files, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(z_files[0], z_arrays[0], atol=1e-5)  # same pixels: same embedding
  assert model.encode_text(["a red circle", "a blue star"]).shape == (2, 16)
  assert model.score(images, ["a red circle", "a blue star", "a cross"]).shape == (2, 3)
  labels, probs = model.zero_shot(images[0], ["red circle", "blue star"])
  assert len(labels) == 1 and labels[0] in ("red circle", "blue star")
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)  # a float32 softmax: a rounding or two
  greedy = model.caption(images)
  beam = model.caption(images, method="beam", beam_size=3)
  sampled = model.caption(images, method="sample", top_p=0.9, seed=1)
  for captions in (greedy, beam, sampled):
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)


def test_predict_command_prints_captions_and_labels(workdir, images, capsys):
  assert predict.main(["--workdir", workdir, "--images", *images, "--classes", "red circle,blue star",
                       "--method", "beam", "--beam_size", "2"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 2
  for path, line in zip(images, lines):
    assert line.startswith(path) and "caption: " in line and "label: " in line


@pytest.mark.parametrize("extra,message", [
    (["--beam_size", "0", "--method", "beam"], "beam_size=0 is invalid; valid: >= 1"),
    (["--top_p", "1.5"], "top_p=1.5 is invalid; valid: in (0, 1]"),
    (["--min_len", "9", "--max_len", "4"], "min_len=9 is invalid"),
    (["--max_len", "64"], "decode max_len=64 exceeds the model's text max_len 12"),
])
def test_predict_rejects_bad_decoding_options(workdir, images, capsys, extra, message):
  assert predict.main(["--workdir", workdir, "--images", images[0], *extra]) == 2
  assert message in capsys.readouterr().err


def test_match_scores_pairs_and_every_pair_with_the_itm_head(workdir, images, tmp_path):
  """BLIP's ITM probabilities: the pairs are the every-pair matrix's diagonal, each what the runner's
  matching calls give; a model without the head, or pairs of unequal counts, are named."""
  cfg = tiny_config(evals={})
  cfg.model.update(fusion=dict(share="none", variant="mu", depth=1))
  cfg.objectives = {"softmax_contrastive": 1.0, "itm": 1.0}
  blip = vljax.load(write_random_workdir(str(tmp_path / "blip"), cfg, seed=0))
  texts = ["a red circle", "a blue star"]
  pairs, every = blip.match(images, texts), blip.match(images, texts + ["a cross"], every_pair=True)
  assert pairs.shape == (2,) and every.shape == (2, 3) and ((every > 0) & (every < 1)).all()
  # The same pairs through the same program, in chunks made up otherwise: a rounding at most.
  np.testing.assert_allclose(np.diagonal(every)[:2], pairs, rtol=1e-6)
  memory = blip.runner.fusion_memory(blip.params, blip._images(images))
  np.testing.assert_array_equal(pairs, blip.runner.match_probs(blip.params, memory, blip._tokens(texts), np.arange(2)))
  with pytest.raises(ValueError, match=r"match: 2 images and 3 texts; pairs need one text per image"):
    blip.match(images, texts + ["a cross"])
  with pytest.raises(ValueError, match=r"image-text matching needs a model with an image-text matching \(ITM\) head; \w+ has contrastive"):
    vljax.load(workdir).match(images, texts)


def test_bad_images_and_workdirs_are_clear_errors(workdir, images, tmp_path, capsys):
  broken = tmp_path / "broken.png"
  broken.write_bytes(b"not an image")
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  assert predict.main(["--workdir", workdir, "--images", str(broken)]) == 2
  assert f"cannot decode image file {str(broken)!r}" in capsys.readouterr().err
  assert predict.main(["--workdir", workdir, "--images", str(tmp_path / "missing.png")]) == 2
  assert "missing.png' does not exist" in capsys.readouterr().err
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before  # nothing written is lost
  (tmp_path / "run").mkdir()
  with pytest.raises(FileNotFoundError, match="config.json' does not exist"):
    vljax.load(str(tmp_path / "run"))
  (tmp_path / "run" / "config.json").write_text(open(os.path.join(workdir, "config.json")).read())
  with pytest.raises(FileNotFoundError, match="vljax.load: no checkpoints in"):
    vljax.load(str(tmp_path / "run"))
  model = vljax.load(workdir)
  with pytest.raises(ValueError, match=r"image 0: expected a file path or a uint8 array"):
    model.encode_image(np.zeros((32, 32, 3), np.float32))
  with pytest.raises(ValueError, match="class_names must be a non-empty list"):
    model.zero_shot(images, "red circle")


def test_inference_imports_no_training_code():
  """vljax.load and `python -m vljax.predict` run where the trainer's machinery is not wanted: a
  fresh interpreter that imports them holds no module of vljax.train, nor the optimizer library."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  code = ("import sys\n"
          "import vljax, vljax.inference, vljax.predict\n"
          "from vljax.inference import ModelRunner, Predictor, load\n"
          "train = sorted(m for m in sys.modules if m.startswith('vljax.train'))\n"
          "assert not train, train\n"
          "assert 'optax' not in sys.modules\n")
  env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr
