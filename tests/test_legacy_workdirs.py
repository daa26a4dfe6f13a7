"""Old configs and workdirs keep working on the composable model: a config naming two_tower / coca /
cappa builds its composable equivalent (frozen regexes included), and a workdir whose checkpoints
the legacy classes wrote (tests/legacy_models.py) resumes on the same trajectory and serves
init_from and vljax.load through the param translation."""

import shutil

import jax
import numpy as np
import pytest
from flax import traverse_util

import legacy_models
import vljax
from conftest import tiny_config
from vljax import checkpoint_io
from vljax.models import legacy, registry
from vljax.train import setup
from vljax.train.trainer import train_and_evaluate

LEGACY_CLIP = dict(name="two_tower", embed_dim=16, image=dict(variant="mu/8", pool="gap", posemb="sincos2d"),
                   text=dict(variant="mu", causal=False, pool="last"), logit_scale_init=10.0)


def _legacy_lit_config(**overrides):
  """A LiT-style legacy config: two_tower with "img/.*" frozen, which froze img/head too."""
  settings = dict(dict(total_steps=4, evals={}, checkpoint=dict(every=2, keep=3, async_save=False)), **overrides)
  cfg = tiny_config(**settings)
  cfg.model = LEGACY_CLIP
  cfg.frozen = ("img/.*",)
  return cfg


def _train_with_legacy_class(cfg, workdir, monkeypatch):
  """Train `cfg` with the legacy class itself, as the code before composable did: its tree, its
  opt state and metadata naming "two_tower"."""
  with monkeypatch.context() as m:
    m.setitem(registry.MODELS, "two_tower", legacy_models.TwoTower)
    m.delitem(registry.ALIASES, "two_tower")
    m.setattr(setup.legacy, "upgrade_config", lambda c: None)
    train_and_evaluate(cfg, workdir)


def _flat(params):
  return traverse_util.flatten_dict(jax.device_get(params), sep="/")


def test_a_legacy_run_config_becomes_its_composable_equivalent():
  cfg = _legacy_lit_config()
  assert legacy.upgrade_config(cfg) == "two_tower"
  assert cfg.model.name == "composable" and cfg.model.contrastive.image_proj
  assert tuple(cfg.frozen) == ("img/.*", "img_proj/.*")  # the image projection was img/head
  assert legacy.upgrade_config(cfg) is None  # already composable: left alone
  # CoCa's "txt" was the token embedding alone: composable's txt also holds its [CLS] and layers.
  paths = ["img/a", "txt/embedding/embedding", "txt/cls", "txt/encoder/block_0/k", "dec/x"]
  assert legacy.translate_frozen("coca", ("txt/.*", "unimodal/.*"), paths) == (
      r"txt/encoder/.*", r"txt/embedding/embedding")
  assert legacy.translate_frozen("coca", ("txt/.*", "cls", "unimodal/.*"), paths) == ("txt/.*",)


@pytest.fixture(scope="module")
def legacy_workdir(tmp_path_factory) -> str:
  """A workdir the legacy class trained 4 steps, checkpoints at 2 and 4."""
  workdir = str(tmp_path_factory.mktemp("legacy") / "run")
  with pytest.MonkeyPatch.context() as m:
    _train_with_legacy_class(_legacy_lit_config(), workdir, m)
  return workdir


@pytest.mark.slow
@pytest.mark.cross_path  # the legacy class's steps against composable's: two programs
def test_a_legacy_workdir_resumes_on_the_same_trajectory(legacy_workdir, tmp_path):
  """A copy of the legacy workdir cut back to step 2 resumes on composable (from the same legacy
  config) to the same params up to float32 rounding, the frozen ones bit for bit."""
  cut = str(tmp_path / "resumed")
  shutil.copytree(legacy_workdir, cut)
  shutil.rmtree(f"{cut}/checkpoints/4")
  legacy_params, _ = checkpoint_io.load_params(legacy_workdir)  # translated on load
  assert "img_proj" in legacy_params and "head" not in legacy_params["img"]

  train_and_evaluate(_legacy_lit_config(), cut)  # resumes step 2 through the translation
  resumed, step = checkpoint_io.load_params(cut)
  assert step == 4
  want, got = _flat(legacy_params), _flat(resumed)
  assert sorted(want) == sorted(got)
  # Same math in two programs: equal bit for bit at XLA's default here (AVX-512), the last bits of
  # the text embedding apart under AVX2 (3.7e-9 after two steps); then the sharded step tests' bound
  # on Adam's bounded update.
  for path in want:
    np.testing.assert_allclose(got[path], want[path], rtol=1e-5, atol=1e-5, err_msg=path)
  initial, _ = checkpoint_io.load_params(cut, 2)  # the legacy step-2 checkpoint
  frozen = _frozen(want)
  assert frozen and all(np.array_equal(_flat(initial)[p], got[p]) for p in frozen)  # LiT: never updated


def _frozen(flat: dict) -> list[str]:
  return [p for p in flat if p.startswith(("img/", "img_proj/"))]


def test_a_legacy_workdir_loads_and_serves_init_from(legacy_workdir, tmp_path):
  model = vljax.load(legacy_workdir)  # its config.json names two_tower
  assert type(model.model).__name__ == "Composable"
  texts, images = model.encode_text(["a red circle"]), model.encode_image(np.zeros((1, 32, 32, 3), np.uint8))
  assert texts.shape == images.shape == (1, 16) and np.isfinite(texts).all() and np.isfinite(images).all()

  want = _flat(checkpoint_io.load_params(legacy_workdir)[0])
  fresh = tiny_config(total_steps=2, evals={}, checkpoint=dict(every=2, keep=1, async_save=False))
  fresh.model.image.depth = fresh.model.text.depth = 2  # LEGACY_CLIP's towers ("mu": two layers)
  fresh.init_from = dict(workdir=legacy_workdir, subtree="img,img_proj", step=-1, sources=())
  fresh.frozen = ("img/.*", "img_proj/.*")
  train_and_evaluate(fresh, str(tmp_path / "lit"))
  lit = _flat(checkpoint_io.load_params(str(tmp_path / "lit"))[0])
  for path in _frozen(want):
    np.testing.assert_array_equal(lit[path], want[path], err_msg=path)


def test_a_legacy_checkpoint_of_another_model_names_the_mismatch(legacy_workdir, tmp_path):
  workdir = str(tmp_path / "legacy")
  shutil.copytree(legacy_workdir, workdir)
  cfg = _legacy_lit_config(total_steps=6)
  cfg.model = dict(LEGACY_CLIP, embed_dim=32)
  with pytest.raises(ValueError, match=r"(?s)written by a different model \(model='two_tower'\).*img/head/kernel"):
    train_and_evaluate(cfg, workdir)
