"""Converted weights as workdirs: `python -m vljax.convert`, vljax.load, init_from, fitting to a
recipe, bad inputs, and the fine-tuning recipe on real data formats."""

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import vljax  # noqa: E402
from hf_reference import (SMALL_IMAGE, SMALL_LEN, SMALL_VOCAB, TOLERANCE, clip_hf_ids,  # noqa: E402
                          openai_layout, pixels, relative_error, unit,
                          vljax_outputs, write_checkpoint)
from real_data import word_tokenizer  # noqa: E402
from vljax import convert  # noqa: E402
from vljax.convert.__main__ import main as convert_main  # noqa: E402


# ---- workdirs: python -m vljax.convert, vljax.load, init_from --------------------------------------

WORDS = [f"w{i}" for i in range(SMALL_VOCAB)]
# CLIP's vocabulary: id 0 is a real token ("!"), BOS/EOS are the last two ids, no padding id.
CLIP_WORDS = ["!", *WORDS[1:SMALL_VOCAB - 2], "<|startoftext|>", "<|endoftext|>"]
TEXTS = ["w5 w7 w9", "w3", "w10 w11 w12 w13 w14 w15"]


@pytest.mark.cross_path
def test_cli_workdir_opens_with_vljax_load_and_matches_transformers(small_clip, tmp_path):
  # The folder's own tokenizer.json is picked up.
  folder = shutil.copytree(small_clip["folder"], tmp_path / "hf_clip")
  word_tokenizer(folder / "tokenizer.json", CLIP_WORDS)
  out = tmp_path / "clip"
  assert convert_main(["--checkpoint", str(folder), "--workdir", str(out)]) == 0
  cfg = json.loads((out / "config.json").read_text())
  assert cfg["data"]["tokenizer"].startswith("hf:") and cfg["data"]["image_size"] == SMALL_IMAGE
  assert cfg["data"].get("normalization", "siglip") == "siglip"  # CLIP's mean/std are in the weights
  model = vljax.load(str(out))
  assert model.tokenizer.id_offset == 1 and model.step == 0
  np.testing.assert_allclose(model.encode_image(small_clip["pixels"]), small_clip["ref"]["img"], atol=TOLERANCE)
  ids = model.tokenizer.encode(TEXTS, SMALL_LEN)
  assert ids[0, :5].tolist() == [SMALL_VOCAB - 1, 6, 8, 10, SMALL_VOCAB]  # HF's ids + 1
  with torch.no_grad():
    ref = small_clip["model"].get_text_features(input_ids=torch.from_numpy(clip_hf_ids(ids, SMALL_VOCAB - 1)).long())
  np.testing.assert_allclose(model.encode_text(TEXTS), unit(ref.pooler_output.numpy()), atol=TOLERANCE)
  with pytest.raises(ValueError, match="already holds checkpoints"):
    convert.write_workdir(convert.import_checkpoint(str(folder)), str(out))


@pytest.mark.cross_path
def test_workdir_with_published_patch_weights_normalises_inputs_with_clip_statistics(small_clip, tmp_path):
  # vljax.load follows the workdir's data.normalization: CLIP mean/std here, not [-1, 1].
  out = tmp_path / "clip_stats"
  assert convert_main(["--checkpoint", str(small_clip["folder"]), "--workdir", str(out),
                       "--input_normalization", "clip"]) == 0
  assert json.loads((out / "config.json").read_text())["data"]["normalization"] == "clip"
  np.testing.assert_allclose(vljax.load(str(out)).encode_image(small_clip["pixels"]), small_clip["ref"]["img"],
                             atol=TOLERANCE)


@pytest.mark.cross_path
def test_cli_siglip_workdir_with_an_eos_padding_tokenizer(small_siglip, tmp_path):
  # SigLIP's rows: no BOS, EOS-padded to the full length; the final position is pooled.
  path = word_tokenizer(tmp_path / "tokenizer.json", ["<pad>", "</s>", "<unk>", *WORDS[3:]])
  out = tmp_path / "siglip"
  assert convert_main(["--checkpoint", str(small_siglip["folder"]), "--workdir", str(out),
                       "--tokenizer", f"hf:{path}?bos=none&pad=eos"]) == 0
  model = vljax.load(str(out))
  ids = model.tokenizer.encode(TEXTS, SMALL_LEN)
  assert ids[1].tolist() == [3] + [1] * (SMALL_LEN - 1)
  with torch.no_grad():
    ref = small_siglip["model"].get_text_features(input_ids=torch.from_numpy(ids).long())
  np.testing.assert_allclose(model.encode_text(TEXTS), unit(ref.pooler_output.numpy()), atol=TOLERANCE)
  np.testing.assert_allclose(model.encode_image(small_siglip["pixels"]), small_siglip["ref"]["img"], atol=TOLERANCE)
  labels, probs = model.zero_shot(small_siglip["pixels"][:1], ["w5", "w6"], templates=("{}",))
  assert probs.shape == (1, 2)


@pytest.mark.cross_path
@pytest.mark.slow
def test_converted_workdir_is_an_init_from_source(small_clip, tmp_path):
  import ml_collections
  from flax import traverse_util
  from vljax import checkpoint_io
  from vljax.train.trainer import train_and_evaluate

  source = str(tmp_path / "converted")
  converted = convert.import_checkpoint(str(small_clip["folder"]))
  convert.write_workdir(converted, source)
  cfg = ml_collections.ConfigDict(json.loads((tmp_path / "converted" / "config.json").read_text()))
  cfg.update(total_steps=2, batch_size=8, evals={}, log_every=1, progress_bar=False)
  cfg.init_from.workdir = source
  cfg.schedule.warmup_steps = 1
  cfg.frozen = ("img/.*", "txt/.*")  # the steps run, the towers stay the imported ones (lr 0 is no valid lr)
  cfg.checkpoint.update(every=2, async_save=False)
  cfg.data.num_threads = 1
  run = str(tmp_path / "finetune")
  train_and_evaluate(cfg, run)
  trained, step = checkpoint_io.load_params(run)
  assert step == 2
  expected = traverse_util.flatten_dict(converted.params, sep="/")
  got = traverse_util.flatten_dict(trained, sep="/")
  assert set(got) == set(expected)
  towers = [k for k in expected if k.startswith(("img/", "txt/"))]
  assert len(towers) > 20
  for k in towers:
    np.testing.assert_array_equal(got[k], expected[k], err_msg=k)


# ---- fitting to a training config, and errors -------------------------------------------------------

RECIPE = '''
import common


def get_config(arg=None):
  a = common.parse_arg(arg, embed_dim="48", activation="quick_gelu")
  tower = dict(width=128, depth=2, mlp_dim=256, num_heads=2, activation=a["activation"], norm_eps=1e-5)
  c = common.base_config()
  c.model = dict(name="composable", scan=True,
                 image=dict(tower, variant="B/8", pool="tok", pre_norm=True, cls_posemb=True),
                 text=dict(tower, variant="B", causal=True, vocab_size=128),
                 contrastive=dict(embed_dim=int(a["embed_dim"]), image_proj_bias=False, text_proj_bias=False))
  c.data.update(image_size=48, max_len=12)
  return c
'''


def test_config_fits_sizes_and_scan_and_names_the_first_mismatch(small_clip, tmp_path):
  recipe = tmp_path / "recipe.py"
  recipe.write_text(RECIPE)
  # The recipe's tokenizer is "shapes" (id offset 0): the CLIP one given here overrides it.
  tokenizer = "hf:" + word_tokenizer(tmp_path / "tokenizer.json", CLIP_WORDS)
  converted = convert.import_checkpoint(str(small_clip["folder"]), tokenizer=tokenizer, config=str(recipe))
  assert converted.data["tokenizer"] == tokenizer
  assert converted.model_cfg["scan"] and "layers" in converted.params["txt"]["encoder"]
  assert converted.params["txt"]["posemb"]["pos_embedding"].shape == (12, 128)
  assert converted.data["image_size"] == 48
  # Text rows of <= 12 tokens: the shortened, scanned text tower still matches transformers exactly.
  out = vljax_outputs(converted, pixels(4, 48), small_clip["ids"][:, :12])
  assert relative_error(out["txt"], small_clip["ref"]["txt"]) < TOLERANCE

  with pytest.raises(ValueError, match=r"img_proj/kernel is \(128, 48\) in the checkpoint and \(128, 32\) in "
                                       r"the model"):
    convert.import_checkpoint(str(small_clip["folder"]), config=f"{recipe}:embed_dim=32")
  with pytest.raises(ValueError, match="image.activation: checkpoint 'quick_gelu', config 'gelu'"):
    convert.import_checkpoint(str(small_clip["folder"]), config=f"{recipe}:activation=gelu")
  assert convert_main(["--checkpoint", str(small_clip["folder"]), "--workdir", str(tmp_path / "w"),
                       "--config", f"{recipe}:embed_dim=32"]) == 2


def test_bad_inputs_name_the_value_and_the_choices(small_clip, tmp_path):
  folder = str(small_clip["folder"])
  with pytest.raises(FileNotFoundError, match="nowhere.pt"):
    convert.import_checkpoint(str(tmp_path / "nowhere.pt"))
  with pytest.raises(ValueError, match=r"Unknown checkpoint format 'onnx'; valid: \['big_vision_siglip', "
                                       r"'hf_blip', 'hf_clip', 'hf_siglip', 'openai_clip'\]"):
    convert.import_checkpoint(folder, format="onnx")
  with pytest.raises(ValueError, match="Unknown activation 'relu'"):
    convert.import_checkpoint(folder, activation="relu")
  with pytest.raises(ValueError, match="Unknown input_normalization 'zscore'"):
    convert.import_checkpoint(folder, input_normalization="zscore")
  with pytest.raises(ValueError, match="model_type 'clip' is not 'siglip'; use format 'hf_clip'"):
    convert.import_checkpoint(folder, format="hf_siglip")
  with pytest.raises(ValueError, match="max_len 20 exceeds the checkpoint's 16 text positions"):
    convert.import_checkpoint(folder, max_len=20)

  bert = tmp_path / "bert"
  bert.mkdir()
  (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
  with pytest.raises(ValueError, match=r"model_type 'bert' is not supported; valid: \['blip', 'clip', 'siglip'\]"):
    convert.import_checkpoint(str(bert))

  import safetensors.numpy
  arrays = openai_layout(small_clip["sd"])
  extra = dict(arrays, **{"visual.attn_pool.probe": np.zeros((1, 128), np.float32)})
  safetensors.numpy.save_file(extra, str(tmp_path / "extra.safetensors"))
  with pytest.raises(ValueError, match=r"1 tensors were not converted, e.g. \['visual.attn_pool.probe'\]"):
    convert.import_checkpoint(str(tmp_path / "extra.safetensors"))
  resnet = {"visual.layer1.0.conv1.weight": np.zeros((1, 1, 1, 1), np.float32)}
  safetensors.numpy.save_file(resnet, str(tmp_path / "rn50.safetensors"))
  with pytest.raises(ValueError, match="ResNet CLIP"):
    convert.import_checkpoint(str(tmp_path / "rn50.safetensors"))
  # open_clip models trained without QuickGELU: the state dict cannot tell, the caller can.
  gelu = convert.import_checkpoint(write_checkpoint(small_clip, "openai_clip", tmp_path / "oc.safetensors"),
                                   activation="gelu")
  assert gelu.model_cfg["image"]["activation"] == gelu.model_cfg["text"]["activation"] == "gelu"


# ---- the fine-tuning recipe: imported weights, real data, real evals ---------------------------------

@pytest.mark.slow
def test_finetune_recipe_trains_imported_weights_on_array_records_with_tfds_zero_shot(small_clip, tmp_path):
  import os

  import tensorflow_datasets as tfds

  import real_data
  from vljax import config as config_lib
  from vljax.data import shapes
  from vljax.metrics import read_metrics
  from vljax.train.trainer import train_and_evaluate

  folder = shutil.copytree(small_clip["folder"], tmp_path / "hf_clip")
  word_tokenizer(folder / "tokenizer.json", CLIP_WORDS)
  imported = tmp_path / "imported"
  assert convert_main(["--checkpoint", str(folder), "--workdir", str(imported)]) == 0
  real_data.write_array_records(tmp_path / "train", real_data.shapes_pairs(32, image_size=48))
  world = shapes.ShapesWorld(image_size=48)
  classes = [world.zeroshot_example(i) for i in range(16)]
  zeroshot_set = real_data.write_tfds(
      tmp_path / "tfds", "shapes_cls", {"validation": [dict(image=e["image"], label=e["label"]) for e in classes]},
      dict(image=tfds.features.Image(shape=(None, None, 3)),
           label=tfds.features.ClassLabel(names=world.zeroshot_classes())))

  recipe = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "finetune_imported.py")
  cfg = config_lib.load_config(recipe, f"init={imported},train=array_record:{tmp_path / 'train'},"
                                       f"zeroshot={zeroshot_set}")
  assert cfg.data.tokenizer.startswith("hf:") and cfg.data.image_size == SMALL_IMAGE
  cfg.update(batch_size=8, total_steps=2, log_every=1, progress_bar=False)
  cfg.schedule.warmup_steps = 1
  cfg.evals.zeroshot.every = 2
  cfg.checkpoint.update(every=2, async_save=False)
  cfg.data.num_threads = 1
  final = train_and_evaluate(cfg, str(tmp_path / "ft"))
  assert 0 <= final["eval/zeroshot/top1"] <= final["eval/zeroshot/top5"] <= 1
  assert read_metrics(str(tmp_path / "ft"))["data/skipped"][2] == 0
  with pytest.raises(FileNotFoundError, match="vljax.convert"):
    config_lib.load_config(recipe, f"init={tmp_path / 'nowhere'}")
