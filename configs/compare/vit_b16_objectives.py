"""CLIP, SigLIP, CoCa, CapPa and Cap (autoregressive captioning only) on one ViT-B/16 image tower,
trained on image-text data on disk at a DataComp scale and judged by the same frozen-encoder
evaluations. Paths are examples; `--dry_run` first shows each arm's steps, examples and FLOPs:

  python -m vljax.compare --suite configs/compare/vit_b16_objectives.py:'scale=small,train=webdataset:/data/datacomp/small/{00000000..00001287}.tar,tokenizer=bpe:/data/bpe_simple_vocab_16e6.txt.gz,zeroshot=/data/tfds/imagenet2012/5.1.0,classnames=/data/imagenet_classnames.txt,retrieval=/data/coco_karpathy_test.jsonl,fewshot_pets=/data/tfds/oxford_iiit_pet/3.2.0?test=test,compositionality_sugarcrepe=sugarcrepe:/data/sugarcrepe?images=/data/coco/val2017' \\
      --workdir gs://BUCKET/b16_small --plan tpu_pod --launch_args='--zone Z --accelerator-type v5p-64'

The argument, comma-separated keys as the real-scale recipes take them (configs/common.py):
  scale       small | medium | large | xlarge (required): SCALES below
  train       KIND:PATH, the training shards (required; common.use_real_data)
  tokenizer   SPEC, every arm's (required; the default row layout, as captioning needs BOS and padding)
  zeroshot, classnames, retrieval   as clip_vit_b16.py, with the settings in EVALS
  fewshot[_LABEL]=DIR[?shots=SPLIT&test=SPLIT]          linear probes on tfds classification sets
  compositionality[_LABEL]=LAYOUT:PATH[?images=DIR]     ARO / SugarCrepe / Winoground / JSONL
  seeds       runs per arm (default 3)
At least one evaluation set; each labelled set is an evaluator of its own (eval/fewshot_pets/...).

Every arm trains the same ViT-B/16, gap-pooled (a pool without parameters: the captioners' probe
features are as trained as the contrastive ones'), at the scale's batch, lr and warmup, with one
optimizer, on the same data and tokenizer. CLIP and SigLIP share open_clip's B/16 text tower (12
causal layers of width 512); CoCa's has that size with a [CLS] appended (its unimodal decoder) and a
12-layer multimodal decoder of the same width (open_clip's CoCa-B layout); CapPa and Cap decode with
6 layers of the image tower's width (big_vision's CapPa B/16). Each arm keeps the rest of its
recipe: objectives (CoCa's captioning weight 2 with label smoothing 0.1; CapPa and Cap are
coca_vit_b16.py with captioning alone), loss form, bfloat16 compute, FSDP mesh. The budget is the
model FLOPs CLIP spends on the scale's samples seen, every other arm training as many FLOPs: the
question is which objective gives the better encoder for the same compute, and a captioner's step
costs more than CLIP's. Not run at any scale yet.

Not in this suite: NegCLIP, whose swapped-caption twins (vljax/data/caption_twins.py) rewrite the
shapes world's grammar only and come out empty on web captions; and decoder transfer, which
trains and scores on the shapes world only.
"""

import ml_collections

import common

# DataComp's scale presets (Gadre et al. 2023; mlfoundations/datacomp scale_configs.py, used by its train.py):
# samples seen, global batch, peak lr, warmup steps, AdamW beta2 (None there: open_clip's 0.98).
# DataComp trains B/32 at small and medium and L/14 at xlarge; this suite keeps B/16 at every scale,
# so that only the data and the compute change with it.
SCALES = {
    "small": dict(samples=12_800_000, batch=4096, lr=5e-4, warmup=500, b2=0.98),
    "medium": dict(samples=128_000_000, batch=4096, lr=5e-4, warmup=500, b2=0.98),
    "large": dict(samples=1_280_000_000, batch=8192, lr=5e-4, warmup=500, b2=0.98),
    "xlarge": dict(samples=12_800_000_000, batch=90_112, lr=1e-3, warmup=10_000, b2=0.95),
}
REQUIRED = ("scale", "train", "tokenizer")
SUITE_ARGS = dict(common.REAL_DATA_ARGS, scale="", seeds="3")

IMAGE = dict(variant="B/16", pool="gap", posemb="learned")
TEXT = dict(variant="B", causal=True, pool="last")
LAYOUT = dict(name="composable", image=IMAGE, scan=True, remat="minimal")
MODELS = {
    "clip": dict(LAYOUT, text=TEXT, contrastive=dict(embed_dim=512, logit_scale_init=1 / 0.07)),
    "siglip": dict(LAYOUT, text=TEXT, contrastive=dict(embed_dim=512, logit_scale_init=10.0, logit_bias_init=-10.0)),
    "coca": dict(LAYOUT, text=dict(TEXT, pool="cls"),
                 contrastive=dict(embed_dim=512, logit_scale_init=1 / 0.07, image_pool="map",
                                  image_pool_input="memory"),
                 decoder=dict(variant="B", depth=12, memory_queries=256, input="text_tower")),
    "cappa": dict(LAYOUT, decoder=dict(variant="L", depth=6, mode="parallel", parallel_fraction=0.75)),
    "cap": dict(LAYOUT, decoder=dict(variant="L", depth=6, mode="autoregressive")),
}
RECIPES = {"clip": "clip_vit_b16.py", "siglip": "siglip_vit_b16.py", "coca": "coca_vit_b16.py",
           "cappa": "coca_vit_b16.py", "cap": "coca_vit_b16.py"}
CAPTIONING_ONLY = (("objectives", {"captioning": 1.0}),)
# Captioners score zero-shot classes and retrieval captions by their likelihood, one decoder pass per
# (image, text): one template, 10k ImageNet-size images and 1k retrieval images keep that affordable.
EVALS = {"zeroshot": dict(num_examples=10_000), "retrieval": dict(num_examples=1_000),
         "fewshot": dict(num_draws=3), "compositionality": dict()}
ZEROSHOT_TEMPLATES = ("a photo of a {}.",)
# The metric of each evaluator the ranking reads.
RANK_METRICS = {"zeroshot": ("top1",), "retrieval": ("i2t_r1", "t2i_r1"), "fewshot": ("acc_10shot",),
                "compositionality": ("acc",)}


def get_config(arg=None):
  args, sets = parse(arg)
  scale = SCALES[args["scale"]]
  data_arg = f"train={args['train']},tokenizer={args['tokenizer']}"
  c = ml_collections.ConfigDict()
  c.seeds = tuple(range(int(args["seeds"])))
  c.budget = dict(match="flops", like="clip")
  # One input pipeline for every arm (the recipes' differ): open_clip's 77 tokens and CLIP's pixels.
  c.overrides = (*training(scale), ("data.max_len", 77), ("data.normalization", "clip"),
                 ("data.crop_scale", (0.9, 1.0)), ("data.workers", 16))
  c.arms = {arm: dict(recipe=f"{RECIPES[arm]}:{data_arg}",
                      overrides=(("model", model), *(CAPTIONING_ONLY if arm in ("cappa", "cap") else ())))
            for arm, model in MODELS.items()}
  evals = evaluations(args, sets)
  c.evals = evals
  c.eval_points = 4
  c.rank_by = tuple(f"eval/{name}/{metric}" for name, settings in evals.items()
                    for metric in rank_metrics(name, settings))
  return c


def training(scale: dict) -> tuple:
  """The scale's batch, steps (its samples seen over the batch) and DataComp's optimizer: open_clip's
  AdamW (weight decay 0.2, eps 1e-6) with a cosine decay to 0; gradients clipped at norm 1, as the
  B/16 recipes do in bfloat16."""
  return (("batch_size", scale["batch"]), ("total_steps", round(scale["samples"] / scale["batch"])),
          ("optimizer", dict(name="adamw", lr=scale["lr"], b1=0.9, b2=scale["b2"], eps=1e-6, weight_decay=0.2,
                             grad_clip_norm=1.0)),
          ("schedule", dict(name="warmup_cosine", warmup_steps=scale["warmup"], end_fraction=0.0)))


def parse(arg: str | None) -> tuple[dict[str, str], dict[str, str]]:
  """(the plain keys, the labelled eval sets) of the suite's argument; errors name the bad value."""
  rest, sets = common.split_labelled_sets(arg)
  try:
    args = common.parse_arg(rest, **SUITE_ARGS)
  except ValueError as e:
    raise ValueError(f"{e}, or one of {[f'{k}[_LABEL]' for k in common.LABELLED_SET_ARGS]}") from e
  missing = [k for k in REQUIRED if not args[k]]
  if missing:
    raise ValueError(f"no {missing} in the argument; this suite needs {list(REQUIRED)} (scale in "
                     f"{list(SCALES)}), e.g. :scale=small,train=webdataset:/data/{{00000..00127}}.tar,"
                     "tokenizer=bpe:/data/bpe_simple_vocab_16e6.txt.gz,zeroshot=/data/tfds/imagenet2012/5.1.0")
  common.train_source(args["train"])  # KIND:PATH, before any arm's recipe reads it
  if args["scale"] not in SCALES:
    raise ValueError(f"scale={args['scale']!r} is unknown; valid: {list(SCALES)}")
  if not args["seeds"].isdigit() or int(args["seeds"]) < 1:
    raise ValueError(f"seeds={args['seeds']!r}; valid: an int >= 1 (runs per arm, seeds 0..N-1)")
  if not (args["zeroshot"] or args["retrieval"] or sets):
    raise ValueError("no evaluation set in the argument; valid: at least one of zeroshot=, retrieval=, "
                     "fewshot[_LABEL]=, compositionality[_LABEL]=")
  return args, sets


def evaluations(args: dict[str, str], sets: dict[str, str]) -> dict:
  """Every arm's evaluators: those of the recipes' keys and each labelled set, with EVALS' settings."""
  evals = common.real_eval_sets(args)
  if "zeroshot" in evals:
    evals["zeroshot"]["dataset"]["templates"] = ZEROSHOT_TEMPLATES
  evals.update({name: common.labelled_eval_set(name, value) for name, value in sets.items()})
  return {name: dict(settings, **EVALS[name.partition("_")[0]]) for name, settings in evals.items()}


def rank_metrics(name: str, settings: dict) -> tuple[str, ...]:
  if settings.get("dataset", {}).get("layout") == "winoground":
    return ("group_score",)  # Winoground's: text and image scores both right
  return RANK_METRICS[name.partition("_")[0]]
