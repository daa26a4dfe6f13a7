"""The shapes world of the evaluators: built from the data config only by the evaluators that read
it, once per data config; never on a run that trains on other data, where an evaluator that would
read it fails at start naming its `dataset` setting."""

import numpy as np
import pytest

from conftest import tiny_config
from real_data import shapes_pairs, write_folder
from vljax.data import pipeline, shapes
from vljax.evals import world as world_lib
from vljax.evals.arrays import eval_images
from vljax.train import setup

SIZE = 32


@pytest.fixture
def count_worlds(monkeypatch):
  """Starts with no kept worlds; returns the list of worlds constructed since."""
  monkeypatch.setattr(world_lib, "_WORLDS", {})
  built, init = [], shapes.ShapesWorld.__init__

  def counting_init(self, *args, **kwargs):
    init(self, *args, **kwargs)
    built.append(self)
  monkeypatch.setattr(shapes.ShapesWorld, "__init__", counting_init)
  return built


@pytest.fixture
def no_world(monkeypatch):
  """Any ShapesWorld construction, or a world taken from the kept ones, fails the test."""
  def refuse(*args, **kwargs):
    raise AssertionError("a ShapesWorld was built")
  monkeypatch.setattr(world_lib, "_WORLDS", {})
  monkeypatch.setattr(shapes.ShapesWorld, "__init__", refuse)
  monkeypatch.setattr(pipeline, "make_world", refuse)


@pytest.fixture(scope="module")
def real_data(tmp_path_factory):
  """A training folder and two eval sets on disk (JSONL + images): classification and captions."""
  root = tmp_path_factory.mktemp("real")
  pairs = shapes_pairs(16, image_size=SIZE)
  world = shapes.ShapesWorld(image_size=SIZE)
  classes = [world.zeroshot_example(i) for i in range(8)]
  return dict(
      train=write_folder(root / "train", pairs),
      classes=write_folder(root / "cls", [dict(image=e["image"], caption=e["label"]) for e in classes],
                           caption_key="label", fmt="PNG"),
      class_names=world.zeroshot_classes(),
      captions=write_folder(root / "cap", [dict(image=p["image"], caption=[p["caption"]]) for p in pairs],
                            caption_key="captions", fmt="PNG"))


def _real_config(real_data, evals):
  cfg = tiny_config(evals=evals)
  cfg.data.update(name="folder", path=real_data["train"])
  return cfg


def _on_disk(real_data):
  return dict(zeroshot=dict(every=2, dataset=dict(source="jsonl", path=real_data["classes"],
                                                  class_names=real_data["class_names"])),
              retrieval_cap=dict(every=2, dataset=dict(source="jsonl", path=real_data["captions"])))


def test_a_real_data_run_builds_no_shapes_world(real_data, no_world):
  parts = setup.build(_real_config(real_data, _on_disk(real_data)))
  assert sorted(parts.evaluators) == ["retrieval_cap", "zeroshot"]
  assert len(parts.evaluators["zeroshot"].images) == 8 and len(parts.evaluators["retrieval_cap"].images) == 16


@pytest.mark.parametrize("name, settings, match", [
    ("zeroshot", dict(every=2), r"evals.zeroshot reads the shapes world, but this run trains on "
                                r"data.name='folder'.*Valid: set evals.zeroshot.dataset"),
    ("retrieval_coco", dict(every=2, num_examples=8), r"evals.retrieval_coco reads the shapes world.*"
                                                      r"set evals.retrieval_coco.dataset"),
    ("binding", dict(every=2), r"evals.binding reads the shapes world.*no `dataset` setting.*drop "
                               r"evals.binding; evaluators that read sets on disk: \['compositionality', "
                               r"'fewshot', 'retrieval', 'zeroshot'\]"),
])
def test_a_shapes_world_evaluator_on_a_real_data_run_fails_at_start(real_data, no_world, name, settings, match):
  evals = dict(_on_disk(real_data), **{name: settings})
  with pytest.raises(ValueError, match=match):
    setup.build(_real_config(real_data, evals))


def test_an_evaluator_built_directly_on_real_data_names_its_dataset_setting(no_world):
  from vljax.evals.vqa import VQAEvaluator
  from vljax.data import tokenizers
  with pytest.raises(ValueError, match=r"evals.vqa reads the shapes world, but this run trains on data.name='tfds'"):
    VQAEvaluator(dict(num_examples=4), tokenizer=tokenizers.get_tokenizer("shapes"), max_len=24,
                 data=dict(name="tfds", path="/nowhere"))


def test_the_evaluators_of_one_data_config_share_one_world(count_worlds):
  cfg = tiny_config()  # zeroshot, retrieval and binding on the shapes world
  parts = setup.build(cfg)
  assert len(count_worlds) == 1
  setup.build(cfg)  # the same data config again: the kept world
  assert len(count_worlds) == 1
  other = tiny_config()
  other.data.world_seed = 1
  setup.build(other)
  assert len(count_worlds) == 2 and count_worlds[1].seed == 1
  # It is the world pipeline.make_world describes: the eval sets of data.world_seed at data.image_size.
  world = pipeline.make_world(cfg.data)
  binding = parts.evaluators["binding"]
  want = eval_images([world.binding_example(i) for i in range(len(binding.images))])
  np.testing.assert_array_equal(binding.images, want)
  assert world.image_size == cfg.data.image_size == SIZE


def test_dataset_backed_evaluators_on_a_shapes_run_build_no_world(real_data, count_worlds):
  parts = setup.build(tiny_config(evals=_on_disk(real_data)))
  assert sorted(parts.evaluators) == ["retrieval_cap", "zeroshot"] and not count_worlds


def test_a_source_of_the_worlds_scenes_is_measured_by_the_shapes_evaluators(real_data, count_worlds):
  # noisy_shapes and CapFilt's output of it are folder / array_record data holding the world's scenes.
  cfg = _real_config(real_data, dict(binding=dict(every=2, num_examples=8)))
  cfg.data.shapes_scenes = True
  parts = setup.build(cfg)
  assert sorted(parts.evaluators) == ["binding"] and len(count_worlds) == 1
  with pytest.raises(ValueError, match=r"data.shapes_scenes='yes' is invalid; valid: True"):
    world_lib.shapes_scenes(dict(name="folder", shapes_scenes="yes"))
