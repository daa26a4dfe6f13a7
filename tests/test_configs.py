"""Every recipe loads, validates, and builds its model (abstractly: no weights allocated)."""

import glob
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from vljax import config as config_lib
from vljax.train import setup, state as state_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# configs/common.py holds the presets the recipes import; it is no recipe itself.
RECIPES = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.py")) if os.path.basename(p) != "common.py")
# Needs a converted workdir (init=...): built and trained in tests/test_convert.py.
NEEDS_ARG = ("finetune_imported.py",)


load_recipe = config_lib.load_config


def test_every_recipe_has_command_and_expectation_in_docstring():
  for path in RECIPES:
    with open(path) as f:
      head = f.read(2000)
    assert "python -m vljax.train --config configs/" in head, path


@pytest.mark.parametrize("path", [p for p in RECIPES if os.path.basename(p) not in NEEDS_ARG], ids=os.path.basename)
def test_recipe_builds(path):
  cfg = load_recipe(path)
  cfg.evals = {}  # evaluators render their sets; not needed to check the model
  parts = setup.build(cfg)
  inputs = state_lib.dummy_inputs(cfg, 1)
  shapes = jax.eval_shape(lambda r: parts.model.init(r, **inputs)["params"], jax.random.PRNGKey(0))
  count = sum(int(np.prod(x.value.shape if hasattr(x, "value") else x.shape)) for x in jax.tree.leaves(
      shapes, is_leaf=lambda x: hasattr(x, "value")))
  assert count > 0
  if os.path.basename(path) == "clip_vit_b16.py":
    assert 120e6 < count < 160e6, count  # ViT-B/16 (86M) + 12-layer 512-wide text tower (~38M)
  if os.path.basename(path) == "siglip_vit_b16.py":
    assert 170e6 < count < 185e6, count  # SigLIP B/16's 203M less its 32k x 768 text embedding table
  if os.path.basename(path) == "coca_vit_b16.py":
    # CoCa-Base (383M with its 64k vocabulary) less the two 64k x 768 embedding tables: on the
    # shapes vocabulary, ViT-B/16 86M + poolers 14M + 12 unimodal 85M + 12 multimodal 114M layers.
    assert 280e6 < count < 320e6, count


def test_real_scale_recipes_switch_to_data_on_disk_by_their_arguments():
  b16 = os.path.join(ROOT, "configs", "clip_vit_b16.py")
  cfg = load_recipe(b16, "train=webdataset:/data/laion/{00000..00009}.tar,tokenizer=bpe:/d/bpe.txt.gz,"
                         "zeroshot=/d/imagenet2012/5.1.0,classnames=/d/names.txt,retrieval=/d/coco.jsonl")
  assert (cfg.data.name, cfg.data.path, cfg.data.tokenizer) == ("webdataset", "/data/laion/{00000..00009}.tar",
                                                              "bpe:/d/bpe.txt.gz")
  assert sorted(cfg.evals) == ["retrieval", "zeroshot"]  # the shapes evaluators are dropped
  assert cfg.evals.zeroshot.dataset.to_dict() == dict(source="tfds", path="/d/imagenet2012/5.1.0",
                                                      templates="clip80", class_names="/d/names.txt")
  assert cfg.evals.retrieval.dataset.source == "jsonl"
  siglip = load_recipe(os.path.join(ROOT, "configs", "siglip_vit_b16.py"),
                       "train=array_record:/d/*.array_record,tokenizer=sentencepiece:/d/spm.model?bos=none&pad=eos")
  assert siglip.data.tokenizer == "sentencepiece:/d/spm.model?bos=none&pad=eos" and not siglip.evals
  coca = load_recipe(os.path.join(ROOT, "configs", "coca_vit_b16.py"), "train=array_record:/d/*.array_record,"
                                                                        "retrieval=/d/coco.jsonl")
  assert (coca.data.name, sorted(coca.evals)) == ("array_record", ["retrieval"])  # no shapes captioning eval
  assert cfg.data.resize == siglip.data.resize == coca.data.resize == "device"  # crops resized in the step
  assert cfg.data.jpeg_decoder == "simplejpeg"
  assert (load_recipe(b16).data.name, load_recipe(b16).data.resize) == ("shapes", "host")
  with pytest.raises(ValueError, match=r"train='parquet:/x'.*'webdataset'"):
    load_recipe(b16, "train=parquet:/x")
  with pytest.raises(ValueError, match="classnames= needs zeroshot="):
    load_recipe(b16, "classnames=/d/names.txt")


LOAD_FROM_ELSEWHERE = """
import sys
recipe, other = sys.argv[1:]
# As `python -m vljax.train` sees it: ml_collections registers --config.KEY overrides from sys.argv.
sys.argv = ["vljax.train", "--config", recipe, "--workdir", "w", "--config.total_steps=7"]
from vljax.train import __main__ as train_main
train_main.parse_flags(sys.argv)
cfg = train_main._CONFIG.value
assert (cfg.model.name, cfg.model.contrastive.embed_dim, cfg.total_steps) == ("composable", 128, 7), cfg
from vljax import config as config_lib
assert config_lib.load_config(other).model.decoder.input == "text_tower"
print("loaded")
"""


def test_recipes_import_their_presets_from_any_working_directory(tmp_path):
  """`python -m vljax.train --config /abs/configs/clip_shapes.py` and load_config from a directory
  without configs/: each puts the recipe's directory on sys.path, so its `import common` works."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  args = [os.path.join(ROOT, "configs", "clip_shapes.py"), os.path.join(ROOT, "configs", "coca_shapes.py")]
  proc = subprocess.run([sys.executable, "-c", LOAD_FROM_ELSEWHERE, *args], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and "loaded" in proc.stdout, proc.stderr[-3000:]


def test_llava_b16_reads_its_image_tower_and_llm_from_their_workdirs(tmp_path):
  """configs/llava_vit_b16.py: clip= and lm= name workdirs; their config.json decides the towers."""
  import json
  image = dict(variant="B/16", pool="tok", posemb="learned", pre_norm=True, cls_posemb=True)
  lm = dict(vocab_size=512, width=64, depth=2, num_heads=2, mlp_dim=128, max_len=320, tie_embeddings=True)
  for name, cfg in (("clip", dict(model=dict(name="composable", image=image), data=dict(tokenizer="shapes"))),
                    ("lm", dict(model=dict(name="lm", lm=lm), data=dict(tokenizer="hf:/ckpt/qwen/tokenizer.json")))):
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text(json.dumps(cfg))
  recipe = os.path.join(ROOT, "configs", "llava_vit_b16.py")
  args = f"clip={tmp_path}/clip,lm={tmp_path}/lm"
  one = load_recipe(recipe, args)
  assert one.model.image.to_dict() == image and one.model.lm.to_dict() == lm and "text" not in one.model
  assert one.data.tokenizer == "hf:/ckpt/qwen/tokenizer.json"
  assert one.init_from.sources == (f"{tmp_path}/clip:img", f"{tmp_path}/lm:txt,lm")  # tied: no logits/
  assert one.frozen == ("img/.*", "txt/(embedding|posemb)/.*", "lm/.*")
  two = load_recipe(recipe, f"{args},stage=2,stage1=/r/llava1,train=folder:/data/llava_instruct_150k.json")
  assert two.frozen == ("img/.*",) and two.init_from.sources[-1] == "/r/llava1:projector"
  assert two.data.name == "folder" and two.data.conversation_fraction == 0.5
  for bad, message in (("stage=3", r"stage='3'; valid: \['1', '2'\]"), ("stage=2", r"stage=2 starts from stage1="),
                       (f"clip={tmp_path}/none", r"clip=.*config.json' does not exist; give a vljax workdir"),
                       (f"lm={tmp_path}/clip", r"lm=.* holds model 'composable' without `lm` settings")):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
      load_recipe(recipe, bad)


def test_blip2_b16_stage2_takes_the_qformer_of_its_stage1_run(tmp_path):
  import json
  stage1 = load_recipe(os.path.join(ROOT, "configs", "blip2_vit_b16.py"))
  stage1.data.tokenizer = "shapes"
  (tmp_path / "s1").mkdir()
  (tmp_path / "s1" / "config.json").write_text(stage1.to_json())
  two = load_recipe(os.path.join(ROOT, "configs", "blip2_vit_b16.py"), f"stage=2,stage1={tmp_path}/s1")
  q = two.model.qformer
  assert two.model.projector == "qformer" and (q.num_queries, q.depth, q.max_len) == (32, 12, stage1.data.max_len)
  assert q.vocab_size == 128 and two.init_from.sources == (f"{tmp_path}/s1:img,qformer",)  # shapes' padded vocab
  assert sorted(two.evals) == ["caption", "vqa"]
  assert setup.build(two).model.projector_kind == "qformer"
  with pytest.raises(ValueError, match=r"stage=2 starts from stage1=WORKDIR"):
    load_recipe(os.path.join(ROOT, "configs", "blip2_vit_b16.py"), "stage1=/x")
  # t5=: BLIP-2's encoder-decoder form on a converted FlanT5 workdir.
  t5 = dict(vocab_size=128, width=64, depth=2, num_heads=2, head_dim=32, mlp_dim=128, new_token_ids=[100, 101])
  (tmp_path / "t5").mkdir()
  (tmp_path / "t5" / "config.json").write_text(json.dumps(dict(model=dict(name="seq2seq_lm", lm=t5),
                                                               data=dict(tokenizer="shapes"))))
  flan = load_recipe(os.path.join(ROOT, "configs", "blip2_vit_b16.py"),
                     f"stage=2,stage1={tmp_path}/s1,t5={tmp_path}/t5")
  assert flan.model.name == "prefix_lm" and flan.model.lm.to_dict() == t5 and not flan.model.get("scan")
  assert flan.init_from.sources == (f"{tmp_path}/s1:img,qformer", f"{tmp_path}/t5:txt,encoder,decoder,logits")
  assert {"txt/embedding/.*", "encoder/.*", "decoder/.*", "logits/kernel"} <= set(flan.frozen)
  assert setup.build(flan).model.projector_kind == "qformer"
  for bad in (f"t5={tmp_path}/t5", f"stage=2,stage1={tmp_path}/s1,t5={tmp_path}/t5,lm={tmp_path}/t5"):
    with pytest.raises(ValueError, match=r"lm= \(a decoder-only LLM\) or t5= \(an encoder-decoder one\)"):
      load_recipe(os.path.join(ROOT, "configs", "blip2_vit_b16.py"), bad)
  with pytest.raises(ValueError, match=r"t5=.* holds model 'qformer'"):
    load_recipe(os.path.join(ROOT, "configs", "blip2_vit_b16.py"), f"stage=2,stage1={tmp_path}/s1,t5={tmp_path}/s1")
