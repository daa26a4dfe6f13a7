"""Runs a model over arrays of images and tokens: embeddings, caption log-likelihoods and generated
captions, in fixed-size chunks sharded over the mesh's batch axes (one compile per chunk shape).

The evaluators and the Predictor share it. It reads the model's declared capabilities
(vljax.models.capabilities), not vljax.evals: the evaluators import this module.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special
from flax import linen as nn
from jax.experimental import multihost_utils

from vljax import decode as decode_lib
from vljax.inference import embedding_scores
from vljax.data import prompts
from vljax.models import capabilities as model_decl, decoder, seq2seq_lm
from vljax.parallel.mesh import batch_shards
from vljax.parallel.sharding import LOGICAL_RULES, batch_sharding

SCORINGS = ("auto", "embedding", "likelihood")


class ModelRunner:
  """Inference calls of one model; params are passed per call (they change during training)."""

  def __init__(self, model: nn.Module, mesh, chunk: int, tokenizer):
    self.model, self.mesh, self.tokenizer = model, mesh, tokenizer
    self.capabilities = model_decl.of(model)
    self.generative = self.generative_model(model)
    # An encoder-decoder's relative positions have no table: it declares how long a decode may run.
    self.max_text_len = (getattr(model, "max_text_len", None) or model.text["max_len"]) if self.generative else None
    shards = batch_shards(mesh)
    self.chunk = max(shards, chunk - chunk % shards)  # a multiple of the batch shards
    self.has_embeddings = model_decl.EMBEDDINGS in self.capabilities

  @staticmethod
  def generative_model(model: nn.Module) -> bool:
    """Whether it has a text decoder (caption_logits, decode_step): captioners and language models."""
    return "caption_logits" in model_decl.training_outputs(model)

  # ---- plumbing

  def _apply(self, params, *args, method=None, **kwargs):
    with nn.logical_axis_rules(LOGICAL_RULES):
      return self.model.apply({"params": params}, *args, method=method, **kwargs)

  @functools.cached_property
  def _encode(self):
    return jax.jit(lambda params, **inputs: self._apply(params, train=False, **inputs))

  def _chunked(self, fn, *arrays: np.ndarray, chunk: int | None = None, indexed: bool = False) -> np.ndarray:
    """fn(*chunks) over aligned arrays, tails padded by repeating the last row; results concatenated.
    indexed: fn(i, *chunks) with i the chunk's number (int32), for a fresh rng per chunk."""
    chunk = chunk or self.chunk
    outs = []
    for i, start in enumerate(range(0, len(arrays[0]), chunk)):
      parts = [a[start:start + chunk] for a in arrays]
      n = len(parts[0])
      parts = [np.concatenate([p, np.repeat(p[-1:], chunk - n, axis=0)]) if n < chunk else p for p in parts]
      parts = [_global_array(p, batch_sharding(self.mesh, p.ndim)) for p in parts]
      out = fn(np.int32(i), *parts) if indexed else fn(*parts)
      outs.append(jax.tree.map(lambda x: _to_host(x)[:n], out))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)

  def _require(self, what: str, ok: bool, need: str) -> None:
    if not ok:
      raise ValueError(f"{what} needs a model with {need}; {type(self.model).__name__} has none")

  def _require_capability(self, what: str, *options: str) -> None:
    """A clear error, not a shape assertion deep in the model, when it cannot do `what`."""
    if not self.capabilities & set(options):
      can = ", ".join(model_decl.DESCRIPTIONS[c] for c in sorted(self.capabilities)) or "none of them"
      raise ValueError(f"{what} needs a model with {' or '.join(model_decl.DESCRIPTIONS[o] for o in options)}; "
                       f"{type(self.model).__name__} has {can}")

  # ---- embeddings

  def images(self, params, images: np.ndarray) -> np.ndarray:
    """L2-normalised image embeddings [N, E]."""
    self._require("image embedding", self.has_embeddings, "contrastive embeddings")
    return self._chunked(lambda x: self._encode(params, image=x)["img_emb"], images)

  def texts(self, params, tokens: np.ndarray) -> np.ndarray:
    """L2-normalised text embeddings [N, E]."""
    self._require("text embedding", self.has_embeddings, "contrastive embeddings")
    return self._chunked(lambda t: self._encode(params, text=t)["txt_emb"], tokens)

  # ---- frozen image features

  @functools.lru_cache(maxsize=2)
  def _tower_output(self, which: str):
    # The tower without its head: a two-tower ViT projects into the contrastive space after pooling,
    # and probes read the pooled vector before that projection (the others have no head). The head's
    # params are in the tree but unused.
    tower = self.model.img.clone(parent=None, out_dim=None)

    def output(params, image):
      with nn.logical_axis_rules(LOGICAL_RULES):
        pooled, tokens = tower.apply({"params": params["img"]}, image, train=False)
      return (pooled if which == "pooled" else tokens).astype(jnp.float32)
    return jax.jit(output)

  def image_features(self, params, images: np.ndarray) -> np.ndarray:
    """float32 [N, width]: the image tower's pooled output before any head (not normalised)."""
    self._require_capability("image features", model_decl.IMAGE_FEATURES)
    return self._chunked(lambda x: self._tower_output("pooled")(params, x), images)

  def image_tokens(self, params, images: np.ndarray) -> np.ndarray:
    """float32 [N, T, width]: the image tower's output tokens, before pooling (no [CLS])."""
    self._require_capability("image tokens", model_decl.IMAGE_FEATURES)
    return self._chunked(lambda x: self._tower_output("tokens")(params, x), images)

  # ---- caption likelihood

  @functools.cached_property
  def _memory(self):
    return jax.jit(lambda params, image: self._apply(params, image, method="encode_image")["memory"])

  @functools.cached_property
  def _loglik(self):
    def loglik(params, memory, ids):
      logits = self._apply(params, memory, ids, method="caption_logits")
      return decoder.token_log_probs(logits, ids, self.tokenizer.pad_id)
    return jax.jit(loglik)

  def memory(self, params, images: np.ndarray) -> np.ndarray:
    """What the caption decoder cross-attends to, per image [N, S, D]."""
    self._require_capability("caption scoring", model_decl.LIKELIHOOD)
    return self._chunked(lambda x: self._memory(params, x), images)

  def pair_loglik(self, params, images: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """log p(tokens[i] | images[i]) for each i -> [N]."""
    return self._pair_loglik(params, self.memory(params, images), tokens)

  def _pair_loglik(self, params, memory: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    return self._chunked(lambda m, t: self._loglik(params, m, t), memory, tokens)

  def loglik_matrix(self, params, images: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """log p(tokens[j] | images[i]) for every pair -> [N_images, N_texts]."""
    memory = self.memory(params, images)
    n_img, n_txt = len(memory), len(tokens)
    # Pairs enumerated image-major; each chunk of pairs is one decoder call.
    img_index = np.repeat(np.arange(n_img), n_txt)
    txt_index = np.tile(np.arange(n_txt), n_img)
    out = np.empty(n_img * n_txt, np.float32)
    for start in range(0, len(img_index), self.chunk):
      sl = slice(start, start + self.chunk)
      out[sl] = self._chunked(lambda m, t: self._loglik(params, m, t), memory[img_index[sl]],
                              tokens[txt_index[sl]])
    return out.reshape(n_img, n_txt)

  def similarity(self, params, images: np.ndarray, tokens: np.ndarray, scoring: str) -> np.ndarray:
    """Image-text score matrix: embedding cosine or caption log-likelihood."""
    if self.resolve_scoring(scoring) == "embedding":
      return embedding_scores.score_matrix(self.images(params, images), self.texts(params, tokens))
    return self.loglik_matrix(params, images, tokens)

  def pair_scores(self, params, images: np.ndarray, tokens: dict[str, np.ndarray], scoring: str
                  ) -> dict[str, np.ndarray]:
    """For each named caption set, the score of each (images[i], tokens[i]) pair -> [N]; the images
    are encoded once for all sets."""
    if self.resolve_scoring(scoring) == "embedding":
      zimg = self.images(params, images)
      return {k: embedding_scores.pair_scores(zimg, self.texts(params, t)) for k, t in tokens.items()}
    memory = self.memory(params, images)
    return {k: self._pair_loglik(params, memory, t) for k, t in tokens.items()}

  # ---- image-text matching (BLIP's ITM head)

  @functools.cached_property
  def _fusion_memory(self):
    return jax.jit(lambda params, image: self._apply(params, image=image, train=False)["fusion_memory"])

  def fusion_memory(self, params, images: np.ndarray) -> np.ndarray:
    """What the image-grounded text encoder cross-attends to, per image [N, T, D]."""
    self._require_capability("image-text matching", model_decl.MATCHING)
    return self._chunked(lambda x: self._fusion_memory(params, x), images)

  def match_probs(self, params, memory: np.ndarray, tokens: np.ndarray, memory_index: np.ndarray) -> np.ndarray:
    """float32 [N]: the ITM head's probability that tokens[i] describes the image of
    memory[memory_index[i]] (memory from fusion_memory), pairs gathered a chunk at a time."""
    logits = self.pair_itm_logits(params, memory, tokens, memory_index, np.arange(len(tokens)))
    return scipy.special.softmax(logits, axis=-1)[:, 1].astype(np.float32)

  @functools.cached_property
  def _itm_logits(self):
    return jax.jit(lambda params, memory, ids: self._apply(params, memory, ids, method="itm_logits"))

  def pair_itm_logits(self, params, memory: np.ndarray, tokens: np.ndarray, memory_index: np.ndarray,
                      token_index: np.ndarray) -> np.ndarray:
    """float32 [P, 2]: the ITM head's (no match, match) logits of each pair (memory[memory_index[p]],
    tokens[token_index[p]]); a chunk's rows are gathered as it runs, never every pair's at once."""
    self._require_capability("image-text matching", model_decl.MATCHING)
    memory_index, token_index = np.asarray(memory_index), np.asarray(token_index)
    out = np.empty((len(memory_index), 2), np.float32)
    for start in range(0, len(memory_index), self.chunk):
      sl = slice(start, start + self.chunk)
      out[sl] = self._chunked(lambda m, t: self._itm_logits(params, m, t), memory[memory_index[sl]],
                              tokens[token_index[sl]])
    return out

  def resolve_scoring(self, scoring: str) -> str:
    """"auto" -> embeddings when the model has them, else likelihood."""
    if scoring not in SCORINGS:
      raise ValueError(f"Unknown scoring {scoring!r}; valid: {list(SCORINGS)}")
    self._require_capability(f"image-text scoring (scoring={scoring!r})", *model_decl.SCORING_NEEDS[scoring])
    if scoring == "auto":
      return "embedding" if self.has_embeddings else "likelihood"
    return scoring

  # ---- generation

  @functools.lru_cache(maxsize=8)
  def _caption_fn(self, options: decode_lib.DecodeOptions):
    tok = self.tokenizer

    def caption(params, images, rng, chunk_index):
      rng = jax.random.fold_in(rng, chunk_index)  # else row r of every chunk draws the same noise
      with nn.logical_axis_rules(LOGICAL_RULES):
        memory = self.model.apply({"params": params}, images, method="encode_image")["memory"]
        # BOS and the first max_len - 1 generated tokens are fed back: max_len positions.
        cache = decoder.init_cache(self.model, params, memory, options.max_len)
        return decode_lib.decode(decoder.make_step_fn(self.model, params), cache, images.shape[0],
                                 bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id, options=options,
                                 rng=rng)
    return jax.jit(caption)

  def caption(self, params, images: np.ndarray, options: decode_lib.DecodeOptions,
              rng: jax.Array | None = None) -> tuple[list[str], np.ndarray | None]:
    """(generated captions, their scores or None) for images [N, H, W, 3] (preprocessed)."""
    self._require("captioning", self.generative, "a caption decoder")
    options.validate()
    if getattr(self.model, "image_prompted", False):  # image-conditioned LMs continue "<image> caption:"
      ids, lengths = prompts.prompt_ids(self.tokenizer, [[prompts.caption_chunk()]] * len(images), 8)
      return self.generate(params, images[:, None], ids[:, :int(lengths.max())], lengths, options, rng), None
    if options.max_len > self.max_text_len:
      raise ValueError(f"decode max_len={options.max_len} exceeds the model's text max_len "
                       f"{self.max_text_len}; valid: 1..{self.max_text_len}")
    rng = jax.random.PRNGKey(0) if rng is None else rng
    fn = self._caption_fn(options)
    result = self._chunked(lambda i, x: fn(params, x, rng, i), images, indexed=True)
    return self.tokenizer.decode(result.tokens), result.scores

  @functools.lru_cache(maxsize=8)
  def _row_sampler(self, options: decode_lib.DecodeOptions):
    tok = self.tokenizer

    def sample(params, images, keys):
      with nn.logical_axis_rules(LOGICAL_RULES):
        memory = self.model.apply({"params": params}, images, method="encode_image")["memory"]
        step_fn = decoder.make_step_fn(self.model, params)

        def one(row_memory, key):  # decode draws one key per batch: a batch of one row per key
          cache = decoder.init_cache(self.model, params, row_memory[None], options.max_len)
          return decode_lib.decode(step_fn, cache, 1, bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id,
                                   options=options, rng=key).tokens[0]
        return jax.vmap(one)(memory, keys)
    return jax.jit(sample)

  def sample_captions(self, params, images: np.ndarray, keys: np.ndarray, options: decode_lib.DecodeOptions
                      ) -> list[str]:
    """One caption per row of images [N, H, W, 3] (preprocessed), row i decoded with keys[i] (uint32
    [N, 2]) alone: the same caption whatever batch or chunk the row lands in (CapFilt's resumable
    sampling)."""
    self._require("captioning", self.generative, "a caption decoder")
    options.validate()
    fn = self._row_sampler(options)
    return self.tokenizer.decode(self._chunked(lambda x, k: fn(params, x, k), images, keys))


  @functools.lru_cache(maxsize=8)
  def _generate_fn(self, options: decode_lib.DecodeOptions, prompt_len: int):
    tok = self.tokenizer

    def generate(params, images, ids, lengths, rng, chunk_index):
      rng = jax.random.fold_in(rng, chunk_index)  # else row r of every chunk draws the same noise
      with nn.logical_axis_rules(LOGICAL_RULES):
        memory = None
        if "image" in self.model.inputs:
          memory = self.model.apply({"params": params}, images, method="encode_image")["memory"]
        if getattr(self.model, "encoder_decoder", False):  # the prompt is the encoder's; decode from START
          hidden, mask = self.model.apply({"params": params}, memory, ids, lengths, method="encode_prompt")
          return seq2seq_lm.generate(self.model, params, hidden, mask, options, eos_id=tok.eoc_id, rng=rng)
        # A model that splices image tokens into the text (LLaVA) holds them in its self-attention
        # cache: the prompt is longer by their count - 1, and there is nothing to cross-attend.
        shift = memory.shape[-2] - 1 if getattr(self.model, "splices_image_tokens", False) else 0
        if prompt_len + shift + options.max_len > self.max_text_len:
          raise ValueError(f"prompt length {prompt_len} (+{shift} image positions) + decode max_len="
                           f"{options.max_len} exceeds the model's text max_len {self.max_text_len}")
        return decoder.continue_prompts(self.model, params, memory, ids, lengths, options,
                                        cache_len=prompt_len + shift + options.max_len, eos_id=tok.eoc_id,
                                        pad_id=tok.pad_id, rng=rng, shift=shift)
    return jax.jit(generate)

  def generate(self, params, images: np.ndarray | None, prompt_ids: np.ndarray, prompt_lengths: np.ndarray,
               options: decode_lib.DecodeOptions, rng: jax.Array | None = None) -> list[str]:
    """Continuations of prompts (vljax.data.prompts.prompt_ids) up to <eoc>, as text without the prompt.

    images: preprocessed [N, M, H, W, 3], the M images of each prompt in <image> order (None for a
    text-only language model).
    """
    self._require("generation", self.generative, "a caption decoder")
    options.validate()
    prompt_len = prompt_ids.shape[1]
    if prompt_len + options.max_len > self.max_text_len:
      raise ValueError(f"prompt length {prompt_len} + decode max_len={options.max_len} exceeds the model's "
                       f"text max_len {self.max_text_len}")
    name = type(self.model).__name__
    if images is None and model_decl.PROMPTED in self.capabilities:
      raise ValueError(f"{name} reads images through the prompts' <image> tokens: generate needs images "
                       "[N, M, H, W, 3], one per <image>")
    if images is not None:
      counts = np.sum(prompt_ids == self.tokenizer.image_id, axis=1)
      if np.any(counts != images.shape[1]):
        bad = int(np.argmax(counts != images.shape[1]))
        raise ValueError(f"prompt {bad} has {counts[bad]} <image> tokens but {images.shape[1]} images are "
                         f"given per prompt; they must match")
      if getattr(self.model, "splices_image_tokens", False) and images.shape[1] != 1:
        raise ValueError(f"{name} splices exactly one image into a prompt; got {images.shape[1]} images and "
                         "<image> tokens per prompt; valid: one of each")
    rng = jax.random.PRNGKey(0) if rng is None else rng
    fn = self._generate_fn(options, prompt_len)
    images = np.zeros((len(prompt_ids), 1), np.float32) if images is None else images
    tokens = self._chunked(lambda c, x, i, n: fn(params, x, i, n, rng, c).tokens, images, prompt_ids,
                           np.asarray(prompt_lengths, np.int32), indexed=True)
    return self.tokenizer.decode(prompts.cut_at_eoc(self.tokenizer, tokens))


def _global_array(host: np.ndarray, sharding) -> jax.Array:
  """A global array from a host array every process holds whole (evaluation data is rendered on
  every host): each process fills its own devices' shards."""
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _to_host(x: jax.Array) -> np.ndarray:
  """The whole array on this host, also when other processes hold some of its shards."""
  if x.is_fully_addressable:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))

