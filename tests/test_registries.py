"""One registry style for models, evaluators, objectives and batch formats: each entry registers
itself with a decorator in its own file, each package imports its modules, and adding one is adding
a file; unknown names fail with the valid ones listed."""

import inspect
import sys
import textwrap

import pytest

from conftest import tiny_config
from vljax import evals, models, objectives, plugins
from vljax.data import formats
from vljax.evals import registry as eval_registry
from vljax.models import registry as model_registry
from vljax.train import setup

# package, its registry, the decorator its files use, entry -> the registered class or function
REGISTRIES = {
    "models": (models, models.MODELS, "register_model", lambda cls: cls),
    "evals": (evals, evals.EVALUATORS, "register_evaluator", lambda cls: cls),
    "objectives": (objectives, objectives.OBJECTIVES, "register_objective", lambda info: info.fn),
    "formats": (formats, formats.FORMATS, "register_format", lambda fmt: fmt.collate_fn),
}


def test_the_registries_are_the_dicts_the_code_reads():
  assert models.MODELS is model_registry.MODELS and evals.EVALUATORS is eval_registry.EVALUATORS
  assert sorted(models.MODELS) == ["composable", "flamingo", "llava", "lm", "prefix_lm", "qformer",
                                     "seq2seq_lm"]
  assert sorted(model_registry.ALIASES) == ["cappa", "coca", "two_tower"]  # vljax/models/legacy.py
  assert sorted(evals.EVALUATORS) == ["binding", "caption", "compositionality", "decoder_transfer", "fewshot",
                                     "refexp", "retrieval", "vqa", "zeroshot"]
  assert all(cls.name == name for name, cls in evals.EVALUATORS.items())


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_every_entry_registers_itself_in_its_own_file(kind):
  package, registry, decorator, registered = REGISTRIES[kind]
  assert "import_submodules(__name__, __path__)" in inspect.getsource(package)
  for name, entry in registry.items():
    module = inspect.getmodule(registered(entry))
    assert module.__name__.startswith(package.__name__ + "."), (kind, name, module.__name__)
    assert f'@{decorator}("{name}"' in inspect.getsource(module), (kind, name, module.__name__)


MODEL_FILE = '''
from vljax.models.registry import register_model
from vljax.models.composable import Composable


@register_model("_test_composable_copy")
class CopiedComposable(Composable):
  """A model added by this file alone."""
'''

EVALUATOR_FILE = '''
from vljax.evals.registry import register_evaluator


@register_evaluator("_test_recorder")
class RecorderEvaluator:
  """An evaluator added by this file alone: keeps what it was built from."""

  needs = "scores"
  settings_keys = ("every", "scoring")

  def __init__(self, settings, *, tokenizer, max_len, data):
    self.built_from = (dict(settings), tokenizer, max_len, data)

  def __call__(self, runner, params):
    return {"calls": 1.0}
'''


@pytest.fixture
def plugin_files(tmp_path, monkeypatch):
  """A model file and an evaluator file beside the packages' own, imported as the packages import theirs."""
  added = {}
  for package, source, module, name in ((models, MODEL_FILE, "copied_composable", "_test_composable_copy"),
                                        (evals, EVALUATOR_FILE, "recorder", "_test_recorder")):
    folder = tmp_path / package.__name__.replace(".", "_")
    folder.mkdir()
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(folder)])
    added[f"{package.__name__}.{module}"] = (package, name)
  try:
    for package, _ in added.values():
      plugins.import_submodules(package.__name__, package.__path__)
    yield
  finally:
    for module, (package, name) in added.items():
      sys.modules.pop(module, None)
      (models.MODELS if package is models else evals.EVALUATORS).pop(name, None)


def test_a_model_and_an_evaluator_are_one_file_each(plugin_files):
  cfg = tiny_config(evals={"_test_recorder": dict(every=0), "zeroshot": dict(every=0, num_examples=8)})
  cfg.model.name = "_test_composable_copy"
  parts = setup.build(cfg)
  assert type(parts.model).__name__ == "CopiedComposable"
  settings, tokenizer, max_len, data = parts.evaluators["_test_recorder"].built_from
  assert settings == dict(every=0) and tokenizer is parts.tokenizer and max_len == cfg.data.max_len
  assert data.image_size == cfg.data.image_size
  with pytest.raises(ValueError, match=r"'_test_recorder', 'binding', .*'zeroshot'\]"):
    evals.get_evaluator("recorder")
  with pytest.raises(ValueError, match=r"valid: \['_test_composable_copy', 'composable'"):
    models.get_model(dict(name="copied"))


def test_unknown_names_fail_listing_the_valid_ones():
  with pytest.raises(ValueError, match=r"Unknown model name 'two_towers'; valid: \['composable', 'flamingo', 'llava', "
                                       r"'lm', 'prefix_lm', 'qformer', 'seq2seq_lm'\] \(and \['cappa', 'coca', 'two_tower'\], older names"):
    models.get_model(dict(name="two_towers"))
  with pytest.raises(ValueError, match=r"unknown evaluator 'vqa_v2'; valid: \['binding', 'caption', 'compositionality', "
                                       r"'decoder_transfer', 'fewshot', 'refexp', 'retrieval', 'vqa', 'zeroshot'\], or "
                                       r"compositionality_<label> / fewshot_<label> / retrieval_<label> / "
                                       r"zeroshot_<label>"):
    evals.get_evaluator("vqa_v2")
  assert evals.get_evaluator("retrieval_flickr") is evals.EVALUATORS["retrieval"]
  cfg = tiny_config(evals={"bindng": dict(every=0)})
  with pytest.raises(ValueError, match=r"unknown evaluator 'bindng'; valid: \['binding'"):
    setup.build(cfg)


def test_register_model_checks_the_class_and_the_name():
  with pytest.raises(TypeError, match=r"NoBuilder needs a classmethod from_config\(cfg\) to be registered as "
                                      r"model '_test_no_builder'"):
    @models.register_model("_test_no_builder")
    class NoBuilder:
      pass
  with pytest.raises(ValueError, match="model 'composable' is already registered to Composable"):
    @models.register_model("composable")
    class Impostor:
      @classmethod
      def from_config(cls, cfg):
        return cls()
  with pytest.raises(ValueError, match="alias 'composable' would hide the registered model Composable"):
    model_registry.register_alias("composable", dict)
  twin = models.MODELS["composable"]
  assert models.register_model("composable")(twin) is twin  # a module imported again registers the same class
  assert "_test_no_builder" not in models.MODELS


def _build(self, settings, *, tokenizer, max_len, data):
  del settings, tokenizer, max_len, data


GOOD_EVALUATOR = dict(needs="scores", settings_keys=("every",), __init__=_build)


@pytest.mark.parametrize("change, error, match", [
    (dict(needs=None), TypeError, r"evaluator '_test_bad' \(Bad\) declares no \['needs'\]"),
    (dict(settings_keys=("num_examples",)), TypeError, r"settings_keys must hold 'every'"),
    (dict(__init__=lambda self, settings, *, world, tokenizer, max_len: None), TypeError,
     r"__init__\(settings, \*, tokenizer, max_len, data\) lacks keyword-only \['data'\]"),
])
def test_register_evaluator_checks_what_the_start_up_checks_read(change, error, match):
  attrs = {k: v for k, v in dict(GOOD_EVALUATOR, **change).items() if v is not None}
  with pytest.raises(error, match=match):
    evals.register_evaluator("_test_bad")(type("Bad", (), attrs))
  assert "_test_bad" not in evals.EVALUATORS


def test_register_evaluator_rejects_a_second_class_under_a_taken_name():
  with pytest.raises(ValueError, match="evaluator 'vqa' is already registered to VQAEvaluator"):
    evals.register_evaluator("vqa")(type("OtherVQA", (), dict(GOOD_EVALUATOR)))
  assert evals.EVALUATORS["vqa"].__name__ == "VQAEvaluator"
