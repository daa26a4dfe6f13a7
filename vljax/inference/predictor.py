"""The Predictor: a trained model with its tokenizer, and `load(workdir)` that opens one."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from vljax import checkpoint_io
from vljax import decode as decode_lib
from vljax.data import images as images_lib
from vljax.data import prompts as prompts_lib, shapes, tokenizers
from vljax.evals import templates as templates_lib
from vljax.evals.zeroshot import class_scores
from vljax.inference import attention_maps as attention_maps_lib
from vljax.inference.images import ImageInput, load_images
from vljax.inference.runner import ModelRunner
from vljax.models import capabilities, get_model
from vljax.models.resolve import resolve_model_config
from vljax.parallel.mesh import make_mesh
from vljax.parallel.sharding import replicated

PREDICT_CHUNK = 32


class Predictor:
  """A trained model with its tokenizer: embeddings, zero-shot labels, captions, image-text scores."""

  def __init__(self, cfg: ml_collections.ConfigDict, params: Any, step: int):
    self.cfg, self.step = cfg, step
    self.tokenizer = tokenizers.get_tokenizer(cfg.data.tokenizer)
    self.model = get_model(resolve_model_config(cfg, self.tokenizer))
    self.image_size, self.max_len = cfg.data.image_size, cfg.data.max_len
    self.mesh = make_mesh({"data": -1})
    # Inference batches are small: a modest chunk keeps a single image from paying for 256.
    chunk = min(cfg.eval_batch_size, PREDICT_CHUNK)
    self.runner = ModelRunner(self.model, self.mesh, chunk, self.tokenizer)
    self.params = jax.device_put(params, replicated(self.mesh))

  def _images(self, images: ImageInput) -> np.ndarray:
    return images_lib.normalize(load_images(images, self.image_size), self.cfg.data.get("normalization", "siglip"))

  def _tokens(self, texts: str | Sequence[str]) -> np.ndarray:
    return self.tokenizer.encode([texts] if isinstance(texts, str) else list(texts), self.max_len)

  def encode_image(self, images: ImageInput) -> np.ndarray:
    """L2-normalised image embeddings [N, E] (models with contrastive embeddings)."""
    with jax.set_mesh(self.mesh):
      return self.runner.images(self.params, self._images(images))

  def encode_text(self, texts: str | Sequence[str]) -> np.ndarray:
    """L2-normalised text embeddings [N, E] (models with contrastive embeddings)."""
    with jax.set_mesh(self.mesh):
      return self.runner.texts(self.params, self._tokens(texts))

  def score(self, images: ImageInput, texts: str | Sequence[str], scoring: str = "auto") -> np.ndarray:
    """[N_images, N_texts]: embedding cosine, or log p(text | image) for captioning-only models."""
    with jax.set_mesh(self.mesh):
      return self.runner.similarity(self.params, self._images(images), self._tokens(texts), scoring)

  def match(self, images: ImageInput, texts: str | Sequence[str], every_pair: bool = False) -> np.ndarray:
    """Image-text matching (BLIP's ITM head): the probability that a text describes an image. [N] for
    the pairs (images[i], texts[i]); with every_pair, [N_images, N_texts] for every image against
    every text (N_images x N_texts passes of the image-grounded text encoder)."""
    pixels, ids = self._images(images), self._tokens(texts)
    n, m = len(pixels), len(ids)
    if not every_pair and n != m:
      raise ValueError(f"match: {n} images and {m} texts; pairs need one text per image (or every_pair=True)")
    with jax.set_mesh(self.mesh):
      memory = self.runner.fusion_memory(self.params, pixels)  # names the capability a model lacks
      if not every_pair:
        return self.runner.match_probs(self.params, memory, ids, np.arange(n))
      return self.runner.match_probs(self.params, memory, np.tile(ids, (n, 1)), np.repeat(np.arange(n), m)).reshape(n, m)

  def zero_shot(self, images: ImageInput, class_names: Sequence[str],
                templates: Sequence[str] | None = None, scoring: str = "auto") -> tuple[list[str], np.ndarray]:
    """(predicted class name per image, probabilities [N, C]); templates default to the shapes world's
    for shapes runs, else the short CLIP set (vljax.evals.templates: CLIP_IMAGENET_TEMPLATES has all 80)."""
    if isinstance(class_names, str) or not class_names:
      raise ValueError(f"class_names must be a non-empty list of names, got {class_names!r}")
    if templates is None:
      templates = shapes.PROMPT_TEMPLATES if self.cfg.data.name == "shapes" else templates_lib.SHORT_TEMPLATES
    fill = shapes.fill_prompt if self.cfg.data.name == "shapes" else templates_lib.fill
    prompts = [fill(t, c) for c in class_names for t in templates]
    with jax.set_mesh(self.mesh):
      scores = class_scores(self.runner, self.params, self._images(images), self._tokens(prompts),
                            len(templates), scoring)
    if self.runner.resolve_scoring(scoring) == "embedding":  # cosines -> logits at the learned temperature
      scores = scores * float(np.exp(self.params["t"]))
    probs = np.asarray(jax.nn.softmax(scores, axis=-1))
    return [class_names[i] for i in np.argmax(scores, axis=1)], probs

  def caption(self, images: ImageInput, seed: int = 0, **decode_options: Any) -> list[str]:
    """Generated captions; options as vljax.decode.DecodeOptions (method, beam_size, top_p, ...)."""
    decode_options.setdefault("max_len", self.max_len - 1)
    options = decode_lib.DecodeOptions.from_kwargs(**decode_options)
    with jax.set_mesh(self.mesh):
      captions, _ = self.runner.caption(self.params, self._images(images), options, jax.random.PRNGKey(seed))
    return captions

  def generate(self, images: ImageInput | Sequence[ImageInput] | None, prompts: str | Sequence[str],
               method: str = "greedy", max_new_tokens: int = 16, seed: int = 0, **decode_options: Any
               ) -> list[str]:
    """Each prompt continued up to <eoc> (or max_new_tokens), as text without the prompt.

    For image-conditioned LMs (LLaVA, BLIP-2's stage 2, Flamingo): a prompt's "<image>" marks where
    each of its images goes, in order; `images` gives one image per prompt (paths or arrays), or a
    list of images per prompt (Flamingo's interleaved few-shot prompts: every prompt the same count).
    A prompt without "<image>" and with one image gets it in front. A text-only language model takes
    images=None. Options as vljax.decode.DecodeOptions (beam_size, top_p, temperature, ...)."""
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not texts or not all(isinstance(t, str) for t in texts):
      raise ValueError(f"prompts must be a string or a non-empty list of strings, got {prompts!r}")
    caps = self.runner.capabilities
    if capabilities.PROMPTED not in caps and "image" in self.model.inputs:
      raise ValueError(f"{type(self.model).__name__} does not continue text prompts after an image; its "
                       "captions come from caption(images); generate takes image-conditioned LMs (LLaVA, "
                       "BLIP-2, Flamingo) and text-only LMs")
    per_prompt = None
    if images is not None:
      if "image" not in self.model.inputs:
        raise ValueError(f"{type(self.model).__name__} is a text-only language model: pass images=None")
      per_prompt = self._prompt_images(images, len(texts))
      texts = [t if prompts_lib.IMAGE in t or per_prompt.shape[1] != 1 else f"{prompts_lib.IMAGE} {t}"
               for t in texts]
    elif "image" in self.model.inputs:
      raise ValueError(f"{type(self.model).__name__} reads images through its prompts' {prompts_lib.IMAGE}: "
                       "generate needs images, one per prompt (or a list per prompt)")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={max_new_tokens!r} is invalid; valid: a whole number >= 1")
    if "max_len" in decode_options:
      raise ValueError("generate: the continuation's length is max_new_tokens, not max_len")
    options = decode_lib.DecodeOptions.from_kwargs(method=method, max_len=max_new_tokens, **decode_options)
    ids, lengths = prompts_lib.prompt_ids(self.tokenizer, [[(t, "")] for t in texts], self.max_len)
    ids = ids[:, :int(lengths.max())]
    with jax.set_mesh(self.mesh):
      out = self.runner.generate(self.params, per_prompt, ids, lengths, options, jax.random.PRNGKey(seed))
    return [text.split(prompts_lib.EOC)[0] for text in out]

  def attention_maps(self, images: ImageInput, captions: str | Sequence[str] | None = None, kind: str = "auto",
                     layer: int | str = "mean") -> dict[str, Any]:
    """Where the model looks, as maps over the image patch grid [h, w] (vljax/inference/attention_maps.py);
    draw one with attention_maps.overlay(result["images"][i], map).

    kind "caption" (models with a caption decoder; "auto" picks it for them): each image's caption
    (`captions`, one per image, or the model's greedy caption when None) gets one map per token,
    [tokens, h, w]: the decoder's cross-attention, head mean, of the position that produced the token,
    at decoder layer `layer` (an index) or the "mean" of all layers. kind "pooled" (two-tower models):
    one map [h, w] per image, of the contrastive image embedding (its attention probe, or attention
    rollout over the ViT). Returns {"kind", "method", "images": uint8 [N, S, S, 3] as the model sees
    them, "maps"} and, for captions, "captions" and "tokens" (each map's token as text)."""
    kind = attention_maps_lib.resolve_kind(self.model, kind)
    pixels = load_images(images, self.image_size)
    chunk = min(self.cfg.eval_batch_size, PREDICT_CHUNK)
    if kind == "pooled":
      if captions is not None or not (isinstance(layer, str) and layer == "mean"):
        raise ValueError(f"kind='pooled' maps the image embedding over all its layers: it takes no captions and "
                         f"layer='mean', got captions={captions!r}, layer={layer!r}")
      maps = attention_maps_lib.in_chunks(self._attention_fn("pooled"), self._images(pixels), chunk=chunk)
      return dict(kind=kind, method=attention_maps_lib.pooled_method(self.model), images=pixels, maps=maps)
    attention_maps_lib.check_layer(layer, self.model.text["depth"])
    captions = self.caption(pixels, method="greedy") if captions is None else captions
    captions = [captions] if isinstance(captions, str) else captions
    ids, contents = attention_maps_lib.caption_ids(self.tokenizer, captions, self.max_len)
    if len(captions) != len(pixels):
      raise ValueError(f"{len(captions)} captions for {len(pixels)} images; give one caption per image")
    maps = attention_maps_lib.in_chunks(self._attention_fn("caption"), self._images(pixels), ids, chunk=chunk)
    maps = attention_maps_lib.select_layer(maps, layer)
    tokens = [self.tokenizer.decode(np.asarray(c, np.int32)[:, None]) if c else [] for c in contents]
    return dict(kind=kind, method="cross_attention", images=pixels, maps=[maps[i, :len(c)] for i, c in
                                                                         enumerate(contents)],
                captions=list(captions), tokens=tokens)

  @functools.cached_property
  def _attention_fns(self) -> dict[str, Any]:
    """The attention map computations, jitted once per Predictor (params an argument, not a constant)."""
    return {"caption": jax.jit(functools.partial(attention_maps_lib.caption_maps, self.model)),
            "pooled": jax.jit(functools.partial(attention_maps_lib.pooled_map, self.model))}

  def _attention_fn(self, kind: str):
    return functools.partial(self._attention_fns[kind], self.params)

  def _prompt_images(self, images: Any, count: int) -> np.ndarray:
    """[N, M, H, W, 3] preprocessed: one image per prompt, or a list of M images per prompt."""
    nested = not isinstance(images, (str, np.ndarray)) and len(images) and all(
        isinstance(item, (list, tuple)) for item in images)
    groups = [list(g) for g in images] if nested else [[item] for item in self._as_list(images)]
    if len(groups) != count:
      raise ValueError(f"{len(groups)} image entries for {count} prompts; give one image (or one list of "
                       "images) per prompt")
    sizes = sorted({len(g) for g in groups})
    if len(sizes) != 1 or not sizes[0]:
      raise ValueError(f"every prompt needs the same number (>= 1) of images; got counts {sizes}")
    flat = self._images([item for g in groups for item in g])
    return flat.reshape(count, sizes[0], *flat.shape[1:])

  @staticmethod
  def _as_list(images: Any) -> list:
    if isinstance(images, (str, np.ndarray)) and not (isinstance(images, np.ndarray) and images.ndim == 4):
      return [images]
    return list(images)


def load(workdir: str, step: int | None = None) -> Predictor:
  """The model trained in `workdir` (its config.json and latest checkpoint, or `step`); the weights
  its own evaluations scored (the EMA where its config says ema.evaluate="ema")."""
  path = epath.Path(workdir) / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"vljax.load: {str(path)!r} does not exist; is {workdir!r} a vljax workdir?")
  cfg = ml_collections.ConfigDict(json.loads(path.read_text()))
  params, step = checkpoint_io.load_params(workdir, step, purpose="vljax.load",
                                           weights=checkpoint_io.evaluated_weights(cfg))
  return Predictor(cfg, params, step)
