"""Autoregressive decoding (greedy, beam search, sampling) around a model's step function.

The model gives `step_fn(tokens int32[N], cache, index) -> (logits float32[N, V], cache)`: `tokens`
is the token at position `index` (BOS at 0) and the logits predict position index + 1. Every cache
leaf has a leading batch axis N, so beam search can tile it and reorder it with a gather.

`decode` is traceable end to end (one `lax.while_loop` that exits once every sequence is done,
nothing of size [B, max_len, V]): jit the caller, with the options static. It is not jitted here
because `step_fn` usually closes over the params, which a jit inside would bake in as constants.
Called eagerly it still runs (the loop body compiles; the few ops around it dispatch one by one).

Scores are the model's own log-probs (log_softmax of the logits: no temperature or top-k/top-p,
and not renormalised when min_len masks EOS), summed over the generated tokens up to EOS; beam
search reports them divided by the length penalty, as it ranks them. A sequence that reaches
max_len without EOS ends there (length max_len, no EOS). Batch-sharded inputs stay sharded: the
loop's only collective is the all-reduce of "is everything done?".
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
from jax import lax

StepFn = Callable[[jax.Array, Any, jax.Array], tuple[jax.Array, Any]]
METHODS = ("greedy", "beam", "sample")
NEG_INF = float("-inf")


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
  """How to decode; frozen and hashable, so it can be a static argument of jit."""
  method: str = "greedy"  # "greedy" | "beam" | "sample"
  max_len: int = 32  # max generated tokens after BOS, EOS included
  min_len: int = 1  # EOS is masked until this many tokens have been generated
  beam_size: int = 4
  length_penalty: float = 0.6  # GNMT alpha: finished beams rank by logp / ((5 + len) / 6) ** alpha
  temperature: float = 1.0
  top_k: int = 0  # 0 = off
  top_p: float = 1.0  # nucleus mass; 1.0 = off

  def __post_init__(self):
    self.validate()

  def validate(self, vocab_size: int | None = None) -> None:
    """Raise ValueError naming the first bad option, its value and the valid range."""
    max_k = "vocab_size" if vocab_size is None else f"vocab_size={vocab_size}"
    checks = (
        (self.method in METHODS, "method", f"one of {list(METHODS)}"),
        (self.max_len >= 1, "max_len", ">= 1"),
        (0 <= self.min_len <= self.max_len, "min_len", f"in [0, max_len={self.max_len}]"),
        (self.beam_size >= 1, "beam_size", ">= 1"),
        (self.length_penalty >= 0, "length_penalty", ">= 0 (0 = no penalty)"),
        (self.temperature > 0, "temperature", "> 0"),
        (0 <= self.top_k <= (vocab_size or self.top_k), "top_k", f"in [0, {max_k}] (0 = off)"),
        (0 < self.top_p <= 1, "top_p", "in (0, 1] (1 = off)"),
    )
    for ok, name, valid in checks:
      if not ok:
        raise ValueError(f"DecodeOptions: {name}={getattr(self, name)!r} is invalid; valid: {valid}")

  @classmethod
  def from_kwargs(cls, **kwargs) -> DecodeOptions:
    """Options from a (config) dict; an unknown name fails with the list of valid ones."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = {k: v for k, v in kwargs.items() if k not in names}
    if unknown:
      bad = ", ".join(f"{k}={v!r}" for k, v in unknown.items())
      raise ValueError(f"DecodeOptions: unknown option {bad}; valid names: {names}")
    return cls(**kwargs)


@flax.struct.dataclass
class DecodeResult:
  """Generated tokens (no BOS; pad after the first EOS, EOS kept), their scores and lengths.

  With `return_all_beams` every field gains a beam axis after the batch, best beam first.
  """
  tokens: jax.Array  # int32 [B, max_len]
  scores: jax.Array  # float32 [B]: summed model log-probs up to EOS (beam: / length penalty)
  lengths: jax.Array  # int32 [B]: generated tokens, EOS included


def decode(step_fn: StepFn, cache: Any, batch_size: int, *, bos_id: int | jax.Array, eos_id: int, pad_id: int,
           options: DecodeOptions, rng: jax.Array | None = None,
           return_all_beams: bool = False) -> DecodeResult:
  """Decode `batch_size` sequences with `options.method`; see the module docstring.

  bos_id: the token fed at index 0, one id for all or int32 [batch_size] (e.g. each prompt's last
  token, when the step fn maps index 0 to that prompt's own position).
  """
  bos_id = jnp.broadcast_to(jnp.asarray(bos_id, jnp.int32), (batch_size,))
  sizes = {x.shape[0] if x.ndim else None for x in jax.tree.leaves(cache)}
  if sizes - {batch_size}:
    raise ValueError(f"decode: every cache leaf needs a leading batch axis of batch_size={batch_size}; "
                     f"got leading sizes {sorted(sizes, key=str)}")
  if return_all_beams and options.method != "beam":
    raise ValueError(f"decode: return_all_beams needs method='beam', got method={options.method!r}")
  if options.method == "beam":
    return _beam_search(step_fn, cache, batch_size, bos_id, eos_id, pad_id, options, return_all_beams)
  if options.method == "greedy":
    pick = lambda logp, i: jnp.argmax(logp, axis=-1)
  else:
    if rng is None:
      raise ValueError("decode: method='sample' needs an rng key, got rng=None")
    pick = lambda logp, i: _sample(logp, jax.random.fold_in(rng, i), options)
  return _token_loop(step_fn, cache, batch_size, bos_id, eos_id, pad_id, options, pick)


def _top_k(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """(values, indices) of the k largest along the last axis, ties to the lower index."""
  # Not lax.top_k: the SPMD partitioner all-gathers its operand when the batch is sharded, while a
  # sort along the last axis stays on each shard.
  iota = lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
  neg, idx = lax.sort((-x, iota), dimension=x.ndim - 1, num_keys=1, is_stable=True)
  return -neg[..., :k], idx[..., :k]


def _step(step_fn: StepFn, tokens: jax.Array, cache: Any, index: jax.Array, eos_id: int,
          options: DecodeOptions) -> tuple[jax.Array, Any]:
  """One model step -> (float32 log-probs [N, V] with EOS at -inf before min_len tokens, cache)."""
  logits, cache = step_fn(tokens, cache, index)
  if logits.shape[:1] != tokens.shape or logits.ndim != 2:  # checked while tracing: costs nothing
    raise ValueError(f"decode: step_fn must return logits [N={tokens.shape[0]}, V], got {logits.shape}")
  options.validate(vocab_size=logits.shape[1])
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  too_early = (jnp.arange(logp.shape[-1]) == eos_id) & (index < options.min_len)
  return jnp.where(too_early, NEG_INF, logp), cache


def _sample(logp: jax.Array, key: jax.Array, options: DecodeOptions) -> jax.Array:
  """Draw from softmax(logp / T) restricted to the top-k, then to the nucleus of mass top_p."""
  logits = logp / options.temperature
  if options.top_k:
    kth = _top_k(logits, options.top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, NEG_INF, logits)  # ties with the k-th logit stay in
  if options.top_p < 1:
    desc = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(desc, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # the top token has 0 < top_p: always kept
    n_keep = jnp.sum(mass_before < options.top_p, axis=-1, keepdims=True)
    cutoff = jnp.take_along_axis(desc, n_keep - 1, axis=-1)
    logits = jnp.where(logits < cutoff, NEG_INF, logits)
  return jax.random.categorical(key, logits, axis=-1)


def _token_loop(step_fn: StepFn, cache: Any, batch_size: int, bos_id: jax.Array, eos_id: int, pad_id: int,
                options: DecodeOptions, pick: Callable) -> DecodeResult:
  """Greedy or sampling: one sequence per example until every one has emitted EOS or max_len."""
  def body(state):
    i, last, cache, tokens, scores, lengths, done = state
    logp, cache = _step(step_fn, last, cache, i, eos_id, options)
    tok = jnp.where(done, pad_id, pick(logp, i).astype(jnp.int32))
    tok_logp = jnp.take_along_axis(logp, tok[:, None] % logp.shape[-1], axis=-1)[:, 0]  # pad may be >= V
    scores = scores + jnp.where(done, 0.0, tok_logp)
    lengths = lengths + (~done).astype(jnp.int32)
    return i + 1, tok, cache, tokens.at[:, i].set(tok), scores, lengths, done | (tok == eos_id)

  def cond(state):
    return (state[0] < options.max_len) & ~jnp.all(state[-1])

  b = batch_size
  state = (jnp.int32(0), bos_id, cache,
           jnp.full((b, options.max_len), pad_id, jnp.int32), jnp.zeros((b,), jnp.float32),
           jnp.zeros((b,), jnp.int32), jnp.zeros((b,), bool))
  _, _, _, tokens, scores, lengths, _ = lax.while_loop(cond, body, state)
  return DecodeResult(tokens=tokens, scores=scores, lengths=lengths)


def _gather(x: jax.Array, idx: jax.Array) -> jax.Array:
  """x[b, idx[b, k]] for x [B, M, ...] and idx [B, K]: per example, so a sharded batch stays local."""
  return jax.vmap(lambda row, i: row[i])(x, idx)


def _reorder_cache(cache: Any, beams: jax.Array) -> Any:
  """Cache rows [B * K, ...] (K beams per example, consecutive) gathered along axis 0 by beams [B, K]."""
  b, k = beams.shape
  return jax.tree.map(lambda x: _gather(x.reshape(b, k, *x.shape[1:]), beams).reshape(x.shape), cache)


def _beams_settled(alive_logp: jax.Array, finished_scores: jax.Array, max_penalty: float) -> jax.Array:
  """bool [B]: no alive beam can still beat the worst finished one (unfilled slots are -inf).

  logp only falls as a beam grows, and the length penalty divides it by at most max_penalty, so
  no alive beam can finish above max(alive_logp) / max_penalty.
  """
  return jnp.max(alive_logp, axis=1) / max_penalty <= finished_scores[:, -1]


def _beam_search(step_fn: StepFn, cache: Any, batch_size: int, bos_id: jax.Array, eos_id: int, pad_id: int,
                 options: DecodeOptions, return_all: bool) -> DecodeResult:
  """Beam search over K alive (no EOS yet) and K finished beams per example, best finished first."""
  b, k, max_len = batch_size, options.beam_size, options.max_len
  penalty = lambda length: ((5.0 + length) / 6.0) ** options.length_penalty

  def body(state):
    i, a_tokens, a_logp, a_last, cache, f_tokens, f_scores, f_lengths = state
    logp, cache = _step(step_fn, a_last.reshape(b * k), cache, i, eos_id, options)
    vocab = logp.shape[-1]
    cand = (a_logp[:, :, None] + logp.reshape(b, k, vocab)).reshape(b, k * vocab)
    c_logp, c_idx = _top_k(cand, min(2 * k, k * vocab))  # 2K: >= K of them did not emit EOS
    c_beam, c_tok = c_idx // vocab, (c_idx % vocab).astype(jnp.int32)
    c_tokens = _gather(a_tokens, c_beam).at[:, :, i].set(c_tok)
    # A candidate finishes on EOS (or at max_len) only if it ranks in the top K, as it would in a
    # beam of K; so beam_size=1 is greedy.
    is_eos = c_tok == eos_id
    ends = (is_eos | (i == max_len - 1)) & (jnp.arange(c_tok.shape[1]) < k)
    new_scores = jnp.where(ends, c_logp / penalty(i + 1), NEG_INF)
    f_scores, top = _top_k(jnp.concatenate([f_scores, new_scores], axis=1), k)
    f_tokens = _gather(jnp.concatenate([f_tokens, c_tokens], axis=1), top)
    f_lengths = _gather(jnp.concatenate([f_lengths, jnp.full_like(c_tok, i + 1)], axis=1), top)
    a_logp, top = _top_k(jnp.where(is_eos, NEG_INF, c_logp), k)
    cache = _reorder_cache(cache, _gather(c_beam, top))
    return i + 1, _gather(c_tokens, top), a_logp, _gather(c_tok, top), cache, f_tokens, f_scores, f_lengths

  def cond(state):
    i, a_logp, f_scores = state[0], state[2], state[6]
    return (i < max_len) & ~jnp.all(_beams_settled(a_logp, f_scores, penalty(max_len)))

  first = jnp.where(jnp.arange(k) == 0, 0.0, NEG_INF)  # K copies of BOS: expand only the first
  state = (jnp.int32(0), jnp.full((b, k, max_len), pad_id, jnp.int32), jnp.tile(first, (b, 1)),
           jnp.repeat(bos_id[:, None], k, axis=1), jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), cache),
           jnp.full((b, k, max_len), pad_id, jnp.int32), jnp.full((b, k), NEG_INF, jnp.float32),
           jnp.zeros((b, k), jnp.int32))
  *_, tokens, scores, lengths = lax.while_loop(cond, body, state)
  if return_all:
    return DecodeResult(tokens=tokens, scores=scores, lengths=lengths)
  return DecodeResult(tokens=tokens[:, 0], scores=scores[:, 0], lengths=lengths[:, 0])
