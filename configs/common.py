"""Presets the recipes share: the shapes-world towers, schedule and evaluators, the real-scale
accelerator settings, and recipe arguments (`:ARG`) for data on disk.

Recipes import this file as `import common`: every loader of a recipe (`python -m vljax.train
--config`, vljax.config.load_config) puts the recipe's directory on sys.path first. The schema the
presets fill in is vljax/config.py's.
"""

from __future__ import annotations

import re

import ml_collections

from vljax.config import base_config, load_config, workdir_config  # noqa: F401  (what every recipe starts from)
from vljax.data.formats import DEVICE_RESIZE_FORMATS

# The CPU image tower: a 3-conv stem to 8x8 tokens of width 64, no transformer layers.
SHAPES_IMAGE_TOWER = dict(variant="shapes/conv-64", depth=0, stem_channels=(32, 64, 128), posemb="sincos2d")


def parse_arg(arg: str | None, **defaults: str) -> dict[str, str]:
  """A recipe's `:ARG` as "key=value,key=value" over `defaults`; an unknown key names the valid ones."""
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in defaults:
      raise ValueError(f"config argument {item!r}: expected KEY=VALUE with KEY in {sorted(defaults)}")
    out[key] = value
  return out


def accelerator_training(c: ml_collections.ConfigDict, *, eval_every: int,
                         captioning: bool = False) -> ml_collections.ConfigDict:
  """What the real-scale recipes share: an FSDP mesh, bfloat16 compute over float32 params,
  large eval batches, async checkpoints every 1000 steps, the shapes evals until data is given."""
  c.mesh = dict(data=1, fsdp=-1, tensor=1)
  c.precision = dict(param_dtype="float32", compute_dtype="bfloat16")
  c.evals = shapes_evals(every=eval_every, captioning=captioning)
  c.eval_batch_size = 1024
  c.checkpoint = dict(every=1000, keep=3, async_save=True)
  c.log_every = 100
  return c


def frozen_encoder_suite_evals() -> tuple[dict, tuple[str, ...]]:
  """(evals, rank_by) of the shapes comparison suites that judge image encoders: linear probes,
  zero-shot, retrieval and binding, at sizes whose seed spread is below the differences reported."""
  evals = dict(fewshot=dict(), zeroshot=dict(num_examples=320, templates=("a photo of a {}.", "a {}.")),
               retrieval=dict(num_examples=256), binding=dict(num_examples=512))
  rank_by = ("eval/fewshot/shape_10shot", "eval/fewshot/color_10shot", "eval/zeroshot/top1", "eval/retrieval/i2t_r1",
             "eval/retrieval/t2i_r1", "eval/binding/acc")
  return evals, rank_by


# `:ARG` keys of the real-scale recipes: where their data lives (all empty: the shapes world).
REAL_DATA_ARGS = dict(train="", tokenizer="", zeroshot="", classnames="", retrieval="")
TRAIN_SOURCE_KINDS = ("tfds", "array_record", "webdataset", "folder")


def use_real_data(c: ml_collections.ConfigDict, args: dict[str, str], eval_every: int) -> ml_collections.ConfigDict:
  """Point a recipe at data on disk from its `:ARG` keys (REAL_DATA_ARGS):

    train=KIND:PATH      training source, KIND one of TRAIN_SOURCE_KINDS (vljax/data/sources)
    tokenizer=SPEC       e.g. bpe:/path/bpe_simple_vocab_16e6.txt.gz (vljax/data/tokenizers.py)
    zeroshot=DIR         tfds classification set (builder dir, split "validation"): top1/top5 over
                         the 80 CLIP templates
    classnames=FILE      its class names, one per line (default: the set's ClassLabel names)
    retrieval=DIR|FILE   multi-caption retrieval set: tfds builder dir (split "test"), or a .jsonl of
                         {"image", "captions"}; other splits: --config.evals.<name>.dataset.split=...

  Paths may not contain commas (`:ARG` is comma-separated): use brace ranges, not {a,b} lists.
  With a real training source the shapes evaluators are dropped; the real ones run if given, and
  training crops are resized on the device where the format allows (data.resize="device": the host
  decodes and crops, vljax/data/device_resize.py), JPEGs decoded by simplejpeg.
  """
  if args["train"]:
    kind, path = train_source(args["train"])
    c.data.update(name=kind, path=path)
    c.evals = {}
    c.data.jpeg_decoder = "simplejpeg"
    if c.data.format in DEVICE_RESIZE_FORMATS:
      c.data.resize = "device"
  if args["tokenizer"]:
    c.data.tokenizer = args["tokenizer"]
  for name, settings in real_eval_sets(args).items():
    c.evals[name] = dict(settings, every=eval_every)
  return c


def train_source(value: str) -> tuple[str, str]:
  """(KIND, PATH) of a `train=KIND:PATH` argument."""
  kind, sep, path = value.partition(":")
  if not sep or kind not in TRAIN_SOURCE_KINDS or not path:
    raise ValueError(f"config argument train={value!r}: expected KIND:PATH with KIND in {list(TRAIN_SOURCE_KINDS)}")
  return kind, path


def run_config(workdir: str, arg: str) -> ml_collections.ConfigDict:
  """The config.json of a vljax workdir a recipe argument `arg` names (a run or a converted checkpoint),
  read when the recipe is: the towers another run trained decide the shapes this one loads."""
  return workdir_config(workdir, f"config argument {arg}={workdir!r}")


def pretrained_lm(c: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """An image-conditioned LM recipe's language half from a converted LM workdir (python -m vljax.convert
  --checkpoint HF_DIR): its architecture, tokenizer and weights, frozen but for the rows of the tokens
  the checkpoint lacks (<image>, <eoc>: txt/new_tokens, logits/new_tokens)."""
  lm = run_config(workdir, "lm")
  if lm.model.get("name") != "lm" or not lm.model.get("lm"):
    raise ValueError(f"config argument lm={workdir!r} holds model {lm.model.get('name')!r} without `lm` settings; "
                     "give the workdir python -m vljax.convert --checkpoint HF_LM_DIR wrote")
  settings = lm.model.lm.to_dict() if hasattr(lm.model.lm, "to_dict") else lm.model.lm
  tied = isinstance(settings, dict) and bool(settings.get("tie_embeddings", False))  # no logits/ of its own
  c.model = dict({k: v for k, v in c.model.to_dict().items() if k != "text"}, lm=settings)
  c.data.tokenizer = lm.data.tokenizer
  c.init_from.sources = tuple(c.init_from.sources) + (f"{workdir}:txt,lm" + ("" if tied else ",logits"),)
  c.frozen = tuple(c.frozen) + ("txt/(embedding|posemb)/.*", "lm/.*") + (() if tied else ("logits/kernel",))
  return c


def pretrained_seq2seq(c: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """An image-conditioned LM recipe turned into BLIP-2's encoder-decoder form (model prefix_lm) on a
  converted T5 / FlanT5 workdir (python -m vljax.convert --checkpoint HF_T5_DIR): its architecture,
  tokenizer and weights, frozen but for the rows of the tokens the checkpoint lacks (txt/new_tokens,
  logits/new_tokens)."""
  t5 = run_config(workdir, "t5")
  if t5.model.get("name") != "seq2seq_lm":
    raise ValueError(f"config argument t5={workdir!r} holds model {t5.model.get('name')!r}; give the workdir "
                     "python -m vljax.convert --checkpoint HF_T5_DIR wrote (model seq2seq_lm)")
  settings = t5.model.lm.to_dict()
  tied = bool(settings.get("tie_embeddings", False))
  keep = ("image", "projector", "qformer", "image_token_id", "dtype", "param_dtype", "attention_impl")
  c.model = dict({k: v for k, v in c.model.to_dict().items() if k in keep}, name="prefix_lm", lm=settings)
  c.data.tokenizer = t5.data.tokenizer
  c.init_from.sources = tuple(c.init_from.sources) + (f"{workdir}:txt,encoder,decoder" + ("" if tied else ",logits"),)
  c.frozen = tuple(c.frozen) + ("txt/embedding/.*", "encoder/.*", "decoder/.*") + (() if tied else ("logits/kernel",))
  return c


def shapes_scenes_data(value: str) -> dict:
  """The data settings of `scenes=KIND:PATH`: shapes-world scenes on disk, e.g. a folder of
  `python -m vljax.capfilt.noisy_shapes` or CapFilt's array_record output of it. The shapes evaluators
  still measure the run (data.shapes_scenes), and the crop keeps the whole scene, as the world's own
  training images are not cropped."""
  kind, path = train_source(value)
  return dict(name=kind, path=path, shapes_scenes=True, crop_scale=(1.0, 1.0))


def real_eval_sets(args: dict[str, str]) -> dict[str, dict]:
  """The zero-shot and retrieval settings (no `every`) of REAL_DATA_ARGS' eval keys."""
  evals = {}
  if args["zeroshot"]:
    evals["zeroshot"] = dict(dataset=dict(source="tfds", path=args["zeroshot"], templates="clip80",
                                          class_names=args["classnames"] or None))
  elif args["classnames"]:
    raise ValueError("config argument classnames= needs zeroshot=DIR (the set the names belong to)")
  if args["retrieval"]:
    source = "jsonl" if args["retrieval"].endswith(".jsonl") else "tfds"
    evals["retrieval"] = dict(dataset=dict(source=source, path=args["retrieval"]))
  return evals


# `:ARG` keys that name any number of eval sets on disk, each as `<key>` or `<key>_<label>`: an
# evaluator of its own under that name, logging eval/<key>_<label>/<metric>.
LABELLED_SET_ARGS = ("fewshot", "compositionality")
_LABEL = re.compile(r"^[a-z0-9]+(_[a-z0-9]+)*$")


def split_labelled_sets(arg: str | None) -> tuple[str, dict[str, str]]:
  """(`arg` without its LABELLED_SET_ARGS items, those items as {evaluator name: value})."""
  rest, sets = [], {}
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    base, _, label = key.partition("_")
    if not sep or base not in LABELLED_SET_ARGS:
      rest.append(item)
      continue
    if (label and not _LABEL.match(label)) or key in sets:
      why = "is given twice" if key in sets else "has a bad label; valid: lower-case letters, digits and '_'"
      raise ValueError(f"config argument {item!r}: {key} {why}")
    sets[key] = value
  return ",".join(rest), sets


def _path_options(key: str, value: str, defaults: dict[str, str]) -> tuple[str, dict[str, str]]:
  """(PATH, options over `defaults`) of a `PATH[?KEY=VALUE&...]` argument value."""
  path, _, query = value.partition("?")
  options = dict(defaults)
  for item in filter(None, query.split("&")):
    name, sep, option = item.partition("=")
    if not sep or name not in defaults:
      raise ValueError(f"config argument {key}={value!r}: option {item!r}; valid: KEY=VALUE with KEY in "
                       f"{sorted(defaults)}")
    options[name] = option
  if not path:
    raise ValueError(f"config argument {key}={value!r} names no path")
  return path, options


def labelled_eval_set(key: str, value: str) -> dict:
  """The settings (no `every`) of one split_labelled_sets item:

    fewshot[_LABEL]=DIR[?shots=SPLIT&test=SPLIT]
        linear probe on a tfds classification set (builder dir): shots drawn from split `shots`
        (default train; e.g. train[:65000] for ImageNet, big_vision's), tested on `test` (default
        validation; test for CIFAR-100 or Pets)
    compositionality[_LABEL]=LAYOUT:PATH[?images=DIR]
        LAYOUT sugarcrepe, aro, winoground or jsonl (vljax/evals/compositional_sets.py), images
        under DIR (default: PATH's folder)
  """
  if key.partition("_")[0] == "fewshot":
    path, o = _path_options(key, value, dict(shots="train", test="validation"))
    return dict(dataset=dict(source="tfds", path=path, split=o["test"]),
                shots_dataset=dict(source="tfds", path=path, split=o["shots"]))
  layout, sep, rest = value.partition(":")
  if not sep or not layout or "/" in layout:
    raise ValueError(f"config argument {key}={value!r}: expected LAYOUT:PATH[?images=DIR], LAYOUT one of "
                     "sugarcrepe, aro, winoground, jsonl")
  path, o = _path_options(key, rest, dict(images=""))
  return dict(dataset=dict(layout=layout, path=path, **({"image_root": o["images"]} if o["images"] else {})))


def shapes_contrastive(image: dict | None = None, **contrastive) -> dict:
  """The CPU shapes CLIP model: a conv image tower with max pooling, a 2-layer text transformer, each
  projected to 128 dims (`contrastive` overrides the head: SigLIP's logit_scale_init, logit_bias_init).

  The image tower is the ViT's conv stem with no transformer layers (depth 0). On 2 CPU cores,
  transformer layers and mean pooling learned shape far slower per second: small objects on a
  large noisy background survive a max over positions and are diluted by a mean.
  """
  return dict(name="composable", image=image or dict(SHAPES_IMAGE_TOWER, pool="max"),
              text=dict(variant="shapes-64", causal=False, pool="last"),
              contrastive=dict(dict(embed_dim=128, logit_scale_init=1 / 0.07), **contrastive))


def shapes_coca() -> dict:
  """CoCa on the shapes tower: conv tokens -> 64 memory queries (the captioning pooler) -> 1
  contrastive query reading them (cascade); a 2-layer causal text tower pooling an appended [CLS]
  (the unimodal decoder) and a 2-layer decoder continuing from its tokens (the multimodal one)."""
  return dict(name="composable", image=dict(SHAPES_IMAGE_TOWER),
              text=dict(variant="shapes-64", causal=True, pool="cls"),
              contrastive=dict(embed_dim=128, logit_scale_init=1 / 0.07, image_pool="map",
                               image_pool_input="memory"),
              decoder=dict(variant="shapes-64", depth=2, memory_queries=64, input="text_tower"))


def shapes_cappa() -> dict:
  """CapPa on the shapes tower: the decoder cross-attends to the 8x8 conv tokens; 75% of the
  training examples get parallel prediction."""
  return dict(name="composable", image=dict(SHAPES_IMAGE_TOWER),
              decoder=dict(variant="shapes-64", mode="parallel", parallel_fraction=0.75))


def shapes_language_model(**overrides) -> dict:
  """The shapes language model (configs/lm_shapes.py), the language half of LLaVA and Flamingo:
  4 causal layers of width 64 over 150 positions (6 chunks; an 8-shot question prompt; a prompt
  with 64 image tokens spliced in)."""
  text = dict(variant="shapes-64", depth=4, max_len=150)
  text.update(overrides)
  return text


def shapes_training(c: ml_collections.ConfigDict, total_steps: int = 750) -> ml_collections.ConfigDict:
  """The CPU shapes schedule: batch 256, AdamW 3e-3, evals and checkpoints every 250 steps."""
  c.batch_size = 256
  c.total_steps = total_steps
  c.optimizer.lr = 3e-3
  c.schedule.warmup_steps = 50
  c.evals = shapes_evals(every=250)
  c.checkpoint.every = 250
  c.log_every = 25
  return c


def shapes_evals(every: int, captioning: bool = False, **overrides) -> dict:
  """The shapes evaluators (plus "caption" when `captioning`), every `every` steps and at the end."""
  evals = dict(zeroshot=dict(every=every, num_examples=640),
               retrieval=dict(every=every, num_examples=512),
               binding=dict(every=every, num_examples=512))
  if captioning:
    evals["caption"] = dict(every=every, num_examples=256, num_references=5, decode=dict(method="greedy"))
  for name, settings in overrides.items():
    evals[name].update(settings)
  return evals
