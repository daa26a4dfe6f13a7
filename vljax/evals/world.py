"""The shapes world that evaluators without a `dataset` setting render their fixed eval sets from.

It is built from the run's data config (data.world_seed, image_size, caption_noise, objects per
image: pipeline.make_world), so runs that differ only in seed are evaluated on the same examples.
An evaluator builds it only when it reads it, and the evaluators of one data config share one
world. A run that trains on other data builds none: an evaluator that would read it there fails
at start (check_world_readers), as shapes examples would not measure a model trained on other data,
unless the run says its source holds scenes of this world (data.shapes_scenes: python -m
vljax.capfilt.noisy_shapes writes such a dataset, and CapFilt's output of it is one too).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from vljax.data import pipeline, shapes
from vljax.evals import datasets, registry

DEFAULT_IMAGE_SIZE = 64  # data.image_size when the data config leaves it out (as pipeline.make_world)
_KEEP = 4  # worlds kept, one per data config; a process rarely builds runs of more configs at once
_WORLDS: dict[str, shapes.ShapesWorld] = {}  # data config as sorted JSON -> its world, newest last


def image_size(data: Mapping[str, Any]) -> int:
  """The run's image size: what eval images are rendered or cropped to."""
  return int(data.get("image_size", DEFAULT_IMAGE_SIZE))


def reads_world(settings: Mapping[str, Any]) -> bool:
  """An evaluator reads the shapes world unless its settings point it at a set on disk."""
  return not datasets.as_dict(settings.get("dataset", None))


def shapes_scenes(data: Mapping[str, Any]) -> bool:
  """data.shapes_scenes: the run's real source holds scenes rendered from this world (checked)."""
  value = data.get("shapes_scenes", False)
  if not isinstance(value, bool):
    raise ValueError(f"data.shapes_scenes={value!r} is invalid; valid: True (the source holds scenes of the shapes "
                     "world of data.world_seed and data.image_size, so its evaluators apply) or False")
  return value


def check_world_reader(name: str, cls: type, data: Mapping[str, Any]) -> None:
  """`evals.<name>` (an evaluator of class `cls` that reads the shapes world) may do so on this run:
  the run trains on the shapes world; else an error naming the setting that would give it a set."""
  source = pipeline.check_name(data)
  if source == "shapes" or shapes_scenes(data):
    return
  why = (f"evals.{name} reads the shapes world, but this run trains on data.name={source!r}: shapes "
         "examples do not measure a model trained on other data (data.shapes_scenes=True says the source holds "
         "this world's scenes)")
  if registry.reads_sets_on_disk(cls):
    raise ValueError(f"{why}. Valid: set evals.{name}.dataset (a set on disk, e.g. dict(source='tfds', "
                     f"path=BUILDER_DIR): vljax/evals/datasets.py), or drop evals.{name}")
  raise ValueError(f"{why}, and it has no `dataset` setting to read a set on disk. Valid: drop "
                   f"evals.{name}; evaluators that read sets on disk: {registry.labelled()}")


def check_world_readers(evaluator_classes: Mapping[str, type], evals_cfg: Mapping[str, Any],
                        data: Mapping[str, Any]) -> None:
  """Before any evaluator is built: those that read the shapes world may (check_world_reader)."""
  for name, cls in evaluator_classes.items():
    if reads_world(evals_cfg[name]):
      check_world_reader(name, cls, data)


def shapes_world(data: Mapping[str, Any], evaluator: type) -> shapes.ShapesWorld:
  """The world of data config `data`, built once for all the evaluators that read it."""
  check_world_reader(evaluator.name, evaluator, data)
  key = json.dumps(_plain(data), sort_keys=True, default=repr)
  world = _WORLDS.pop(key, None)
  if world is None:
    world = pipeline.make_world(data)
  _WORLDS[key] = world  # re-inserted: the newest last, the oldest dropped first
  while len(_WORLDS) > _KEEP:
    del _WORLDS[next(iter(_WORLDS))]
  return world


def _plain(data: Mapping[str, Any]) -> dict:
  return data.to_dict() if hasattr(data, "to_dict") else dict(data)
