"""A fresh captioning decoder trained on frozen image tokens: the model, its jitted train step and
loop, and its jitted greedy continuation of prompts (vljax/evals/decoder_transfer.py runs them per task).

The decoder is vljax.models.decoder's (token embedding, causal self-attention, cross-attention to the
memory in every block, vocabulary head) behind a LayerNorm of the memory: frozen towers' tokens
differ in scale from one objective to another, and the decoder should not have to learn that.
Only the decoder's params exist here: the image tower's are never an input of the train step, so
they get no gradient and no optimizer state by construction.

It runs on one device of each process (every process computes the same decoder): a small decoder,
sharded over no mesh. Every jitted function is cached by its hashable settings, so evaluating again
(the next checkpoint, another seed) compiles nothing.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from vljax import decode as decode_lib
from vljax.data import prompts
from vljax.data.tokenizers import Tokenizer
from vljax.models import decoder as decoder_lib
from vljax.models.decoder import CrossDecoder, TokenEmbedding, causal_mask
from vljax.models.layers import layer_norm
from vljax.models.text import text_settings
from vljax.objectives.captioning import captioning_loss
from vljax.parallel.mesh import make_mesh
from vljax.parallel.sharding import LOGICAL_RULES

if TYPE_CHECKING:
  import optax

WARMUP_FRACTION = 0.1  # of the steps, linear from 0, then cosine to 0
GRAD_CLIP_NORM = 1.0
WEIGHT_DECAY = 1e-4
LOSS_WINDOW = 10  # the reported train loss: the mean over the last this many steps (one is noisy)


@dataclasses.dataclass(frozen=True)
class DecoderSpec:
  """The decoder's architecture (hashable: it keys the compiled functions)."""
  vocab_size: int
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  max_len: int  # positions: the longest training sequence, or the longest prompt + answer

  @classmethod
  def from_variant(cls, variant: str, vocab_size: int, max_len: int) -> DecoderSpec:
    """A text variant's sizes (vljax.models.text.TEXT_VARIANTS: "mu", "shapes-64", "S", "B", ...)."""
    s = text_settings(variant)
    return cls(vocab_size, s["width"], s["depth"], s["mlp_dim"], s["num_heads"], max_len)


@dataclasses.dataclass(frozen=True)
class TrainSpec:
  """How the decoder is trained: adamw, warmup then cosine, for a fixed number of steps."""
  steps: int
  batch_size: int
  lr: float
  pad_id: int


class TransferDecoder(nn.Module):
  """Memory [B, S, any width] + ids [B, L] -> float32 logits [B, L, vocab]; with the `caption_logits`
  and `decode_step` methods vljax.models.decoder's decoding helpers drive."""
  spec: DecoderSpec

  def setup(self):
    s = self.spec
    kw = dict(dtype=jnp.float32, param_dtype=jnp.float32)
    self.memory_norm = layer_norm(name="memory_norm", axis_name=None, **kw)
    self.embed = TokenEmbedding(s.vocab_size, s.width, s.max_len, **kw)
    self.dec = CrossDecoder(s.depth, s.mlp_dim, s.num_heads, s.vocab_size, **kw)

  def __call__(self, memory: jax.Array, ids: jax.Array) -> jax.Array:
    return self.caption_logits(memory, ids)

  def caption_logits(self, memory: jax.Array, ids: jax.Array) -> jax.Array:
    return self.dec(self.embed(ids), self.memory_norm(memory), causal_mask(ids.shape[1]))

  def decode_step(self, ids: jax.Array, memory: jax.Array | None, decode_index: jax.Array) -> jax.Array:
    memory = None if memory is None else self.memory_norm(memory)  # None: cross keys/values are cached
    return self.dec(self.embed(ids, decode_index), memory, decode_index=decode_index)


def one_device_mesh():
  """The mesh the transfer runs under, whatever mesh the caller (training, vljax.evaluate) holds."""
  return jax.set_mesh(make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.local_devices()[:1]))


def optimizer(train: TrainSpec) -> optax.GradientTransformation:
  import optax  # here: every evaluator module is imported by vljax.load, which holds no training code

  warmup = int(train.steps * WARMUP_FRACTION)
  schedule = optax.warmup_cosine_decay_schedule(0.0, train.lr, warmup, max(train.steps, warmup + 1))
  return optax.chain(optax.clip_by_global_norm(GRAD_CLIP_NORM),
                     optax.adamw(schedule, weight_decay=WEIGHT_DECAY))


def _jit_with_rules(fn):
  """jax.jit of fn traced under vljax's logical axis rules (the decoder's layers name their axes)."""
  @functools.wraps(fn)
  def with_rules(*args):
    with nn.logical_axis_rules(LOGICAL_RULES):
      return fn(*args)
  return jax.jit(with_rules)


@functools.lru_cache(maxsize=8)
def init_fn(spec: DecoderSpec):
  """jitted (key, memory [1, S, D], ids [1, L]) -> the decoder's params (unboxed)."""
  module = TransferDecoder(spec)
  return _jit_with_rules(lambda key, memory, ids: nn.unbox(module.init(key, memory, ids)["params"]))


@functools.lru_cache(maxsize=8)
def train_step_fn(spec: DecoderSpec, train: TrainSpec):
  """jitted (params, opt_state, memory [N, S, D], ids [N, L], loss_mask [N, L], batch [B]) ->
  (params, opt_state, loss): one step of teacher-forced cross-entropy on rows `batch` of the set.
  Its inputs are the decoder's params and optimizer state and the frozen tokens: nothing else."""
  import optax  # as in optimizer()

  module, tx = TransferDecoder(spec), optimizer(train)

  def step(params, opt_state, memory, ids, loss_mask, batch):
    def loss_fn(p):
      logits = module.apply({"params": p}, memory[batch], ids[batch])
      return captioning_loss(logits, ids[batch], pad_id=train.pad_id, loss_mask=loss_mask[batch])[0]
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return _jit_with_rules(step)


def batch_order(num_examples: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
  """int32 [steps, batch_size]: epochs of seeded permutations of the examples, back to back."""
  rng = np.random.default_rng(seed)
  epochs = -(-steps * batch_size // num_examples)
  order = np.concatenate([rng.permutation(num_examples) for _ in range(epochs)])
  return order[:steps * batch_size].reshape(steps, batch_size).astype(np.int32)


def train_decoder(spec: DecoderSpec, train: TrainSpec, memory: np.ndarray, ids: np.ndarray, loss_mask: np.ndarray,
                  seed: int) -> tuple[Any, np.ndarray]:
  """(trained params, the loss of every step [steps]) of a decoder initialised from `seed`, trained on
  memory [N, S, D] (the frozen tokens) and ids / loss_mask [N, L]; call under one_device_mesh()."""
  memory, ids, loss_mask = (jnp.asarray(a) for a in (memory, ids, loss_mask))
  # An RngBitGenerator key: its init compiles in half the time of threefry's, and is as deterministic.
  params = init_fn(spec)(jax.random.key(seed, impl="rbg"), memory[:1], ids[:1])
  opt_state = optimizer(train).init(params)
  step = train_step_fn(spec, train)
  losses = []
  for batch in batch_order(len(ids), train.batch_size, train.steps, seed):
    params, opt_state, loss = step(params, opt_state, memory, ids, loss_mask, batch)
    losses.append(loss)
  return params, np.asarray(jax.device_get(losses), np.float32)


def final_loss(losses: np.ndarray) -> float:
  return float(np.mean(losses[-LOSS_WINDOW:]))


@functools.lru_cache(maxsize=8)
def continue_fn(spec: DecoderSpec, options: decode_lib.DecodeOptions, eos_id: int, pad_id: int):
  """jitted (params, memory [N, S, D], prompt ids [N, P], lengths [N]) -> DecodeResult continuing
  each prompt to eos_id."""
  module = TransferDecoder(spec)

  def continued(params, memory, ids, lengths):
    return decoder_lib.continue_prompts(module, params, memory, ids, lengths, options,
                                        cache_len=ids.shape[1] + options.max_len, eos_id=eos_id, pad_id=pad_id)
  return _jit_with_rules(continued)


def greedy_answers(spec: DecoderSpec, params, memory: np.ndarray, prompt_ids: np.ndarray, prompt_lengths: np.ndarray,
                   max_len: int, tokenizer: Tokenizer) -> list[str]:
  """The texts the decoder continues the prompts with (greedy, up to <eoc> or max_len tokens)."""
  options = decode_lib.DecodeOptions(method="greedy", max_len=max_len)
  fn = continue_fn(spec, options, tokenizer.eoc_id, tokenizer.pad_id)
  tokens = np.asarray(fn(params, jnp.asarray(memory), jnp.asarray(prompt_ids), jnp.asarray(prompt_lengths)).tokens)
  return tokenizer.decode(prompts.cut_at_eoc(tokenizer, tokens))
