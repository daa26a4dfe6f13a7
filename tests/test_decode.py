"""Decoding: greedy/beam/sampling against Python references and brute force, EOS, jit, mesh, options."""

import dataclasses
import functools
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vljax import decode as decode_lib
from vljax.decode import DecodeOptions, decode
from vljax.parallel.mesh import make_mesh
from vljax.parallel.sharding import batch_sharding

PAD, BOS, EOS = 0, 1, 2
V, B, L = 6, 8, 6
ALL_PARTS = ("markov", "position", "history")

# ---------------------------------------------------------------- toy model
# logits = markov[token] + position[index, token] + history[previous token, token] + row_bias[row].
# Zeroing parts gives a plain Markov chain or a position-only model under the same compiled step fn
# (so tests share compilations). The previous token is read from the cache's history leaf and the
# row from its row leaf: wrong tiling or beam reordering of the cache changes the logits.


def random_params(seed, parts=ALL_PARTS, vocab=V, rows=B, max_len=L, eos_bias=0.0):
  rng = np.random.default_rng(seed)
  shapes = {"markov": (vocab, vocab), "position": (max_len, vocab, vocab), "history": (vocab,) * 3}
  params = {k: (1.5 * rng.normal(size=s) if k in parts else np.zeros(s)) for k, s in shapes.items()}
  params["markov"][:, EOS] += eos_bias
  params["row_bias"] = rng.normal(size=(rows, vocab))
  return {k: v.astype(np.float32) for k, v in params.items()}


def init_cache(n, max_len=L):
  """row: which example; count: steps seen (must equal index); hist: tokens fed so far."""
  return {"row": np.arange(n, dtype=np.int32), "count": np.zeros(n, np.int32),
          "hist": np.full((n, max_len), PAD, np.int32)}


STEPS = []  # the index of every step fn call (host callback): counts loop iterations


def make_step(params):
  params = jax.tree.map(jnp.asarray, params)

  def step(tokens, cache, index):
    jax.debug.callback(lambda i: STEPS.append(int(i)), index)
    vocab = params["markov"].shape[-1]
    prev = jnp.where(index > 0, cache["hist"][:, jnp.maximum(index - 1, 0)], BOS)
    wrong_count = (cache["count"] - index)[:, None] * jnp.arange(vocab)  # 0 when the counter is right
    logits = (params["markov"][tokens] + params["position"][index, tokens] + params["history"][prev, tokens]
              + params["row_bias"][cache["row"]] + wrong_count)
    return logits, {"row": cache["row"], "count": cache["count"] + 1,
                    "hist": cache["hist"].at[:, index].set(tokens)}
  return step


def np_logp(params, row, prefix):
  """float64 log-probs of the token after `prefix` (BOS first), as the step fn computes them."""
  i, tok, prev = len(prefix) - 1, prefix[-1], (prefix[-2] if len(prefix) > 1 else BOS)
  p = {k: v.astype(np.float64) for k, v in params.items()}
  logits = p["markov"][tok] + p["position"][i, tok] + p["history"][prev, tok] + p["row_bias"][row]
  return logits - logits.max() - np.log(np.sum(np.exp(logits - logits.max())))


def penalty(length, alpha):
  return ((5.0 + length) / 6.0) ** alpha


def np_score(params, row, tokens, alpha=0.0):
  """Sum of log-probs of `tokens` (no BOS, up to EOS), divided by the GNMT penalty."""
  prefix, total = [BOS], 0.0
  for t in tokens:
    total += np_logp(params, row, prefix)[t]
    prefix.append(t)
  return total / penalty(len(tokens), alpha)


def np_greedy(params, row, max_len, min_len):
  prefix = [BOS]
  for i in range(max_len):
    logp = np_logp(params, row, prefix)
    if i < min_len:
      logp[EOS] = -np.inf
    prefix.append(int(np.argmax(logp)))
    if prefix[-1] == EOS:
      break
  return prefix[1:]


def np_brute_force(params, row, max_len, min_len, alpha, vocab):
  """(score, tokens) of the best penalised sequence: EOS-terminated, or max_len long without EOS."""
  words = [t for t in range(vocab) if t != EOS]
  seqs = [list(body) + [EOS] for n in range(min_len, max_len) for body in itertools.product(words, repeat=n)]
  seqs += [list(s) for s in itertools.product(words, repeat=max_len)]
  return max((np_score(params, row, s, alpha), s) for s in seqs)


def steps_taken(fn, *args, **kwargs):
  """fn's result on the host and how many times the step fn ran."""
  STEPS.clear()
  out = jax.device_get(fn(*args, **kwargs))
  jax.effects_barrier()
  return out, len(STEPS)


def padded(tokens, max_len=L):
  return list(tokens) + [PAD] * (max_len - len(tokens))


# The toy programs are tiny: skipping LLVM's optimisation passes compiles them ~1/3 faster.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@functools.partial(jax.jit, static_argnames=("options", "return_all_beams"), compiler_options=FAST_COMPILE)
def run(params, cache, options, rng=None, return_all_beams=False):
  return decode(make_step(params), cache, cache["row"].shape[0], bos_id=BOS, eos_id=EOS, pad_id=PAD,
                options=options, rng=rng, return_all_beams=return_all_beams)


GREEDY = DecodeOptions(max_len=L)
BEAM = DecodeOptions(method="beam", max_len=L, beam_size=4)
BEAM1 = DecodeOptions(method="beam", max_len=L, beam_size=1, length_penalty=0.0)
SAMPLE = DecodeOptions(method="sample", max_len=L, temperature=1.5, top_k=4, top_p=0.9)

# ---------------------------------------------------------------- greedy


@pytest.mark.cross_path
@pytest.mark.parametrize("parts", [("markov",), ("position",), ALL_PARTS], ids="+".join)
def test_greedy_matches_reference_loop(parts):
  for seed in range(2):
    params = random_params(seed, parts, eos_bias=1.0)
    out = jax.device_get(run(params, init_cache(B), GREEDY))
    for r in range(B):
      ref = np_greedy(params, r, L, GREEDY.min_len)
      assert out.tokens[r].tolist() == padded(ref)
      assert out.lengths[r] == len(ref)
      # float32 log-softmax per step vs a float64 replay of the tokens: a few roundings a step, 12 steps
      np.testing.assert_allclose(out.scores[r], np_score(params, r, ref), rtol=1e-5, atol=1e-5)


def test_eos_then_pads_and_lengths():
  out = jax.device_get(run(random_params(3, eos_bias=1.5), init_cache(B), GREEDY))
  ended = 0
  for toks, n in zip(out.tokens.tolist(), out.lengths.tolist()):
    if EOS in toks:
      ended += 1
      assert toks.index(EOS) == n - 1 and toks[n:] == [PAD] * (L - n)
    else:
      assert n == L
  assert 0 < ended < B  # some rows stop early, some run to max_len


@pytest.mark.parametrize("options", [GREEDY, BEAM, SAMPLE], ids=lambda o: o.method)
def test_min_len_masks_eos(options):
  o = dataclasses.replace(options, min_len=3)
  params = random_params(4, eos_bias=8.0)  # EOS would otherwise come first
  out = jax.device_get(run(params, init_cache(B), o, rng=jax.random.key(0)))
  assert not (out.tokens[:, :3] == EOS).any()
  assert (out.tokens[:, 3] == EOS).all() and (out.lengths == 4).all()


def test_greedy_stops_once_all_done():
  """EOS dominates after one token: the loop calls the step fn twice, not max_len times."""
  out, steps = steps_taken(run, random_params(5, eos_bias=12.0), init_cache(B), GREEDY)
  assert (out.lengths == 2).all() and steps == 2


# ---------------------------------------------------------------- beam search


@pytest.mark.cross_path
def test_beam_size_1_is_greedy():
  for seed in range(3):
    params = random_params(seed, eos_bias=1.0)
    greedy, beam = run(params, init_cache(B), GREEDY), run(params, init_cache(B), BEAM1)
    np.testing.assert_array_equal(beam.tokens, greedy.tokens)
    np.testing.assert_array_equal(beam.lengths, greedy.lengths)
    # the same log-probs through other ops (top-k bookkeeping vs argmax): a rounding or two
    np.testing.assert_allclose(beam.scores, greedy.scores, rtol=1e-6)


def test_beam_finishes_only_candidates_in_the_top_k():
  """After 3, EOS is the runner-up (0.4 vs 0.45): a finished beam for K=4, not for K=1 (greedy).

  The greedy path 3 4 5 4 5 4 scores far below 3 EOS; beam_size=1 still returns it.
  """
  params = random_params(0, parts=())
  params["row_bias"][:] = 0
  rows = {BOS: [.02, .02, .02, .9, .02, .02], 3: [.05, .05, .4, .02, .45, .03],
          4: [.1, .1, .1, .1, .1, .5], 5: [.1, .1, .1, .1, .5, .1]}
  for tok, probs in rows.items():
    params["markov"][tok] = np.log(probs)
  assert np.asarray(run(params, init_cache(B), BEAM1).tokens[0]).tolist() == [3, 4, 5, 4, 5, 4]
  assert np.asarray(run(params, init_cache(B), BEAM).tokens[0]).tolist() == padded([3, EOS])


@pytest.mark.cross_path
def test_beam_early_exit_is_exact():
  """Stopping once no alive beam can beat the worst finished one returns all beams as running on does."""
  seeds, cache = range(30, 36), init_cache(B)
  params = [random_params(seed, eos_bias=8.0) for seed in seeds]  # some stop early, some do not
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(decode_lib, "_beams_settled", lambda a_logp, *_: jnp.zeros(a_logp.shape[0], bool))
    run_on = jax.jit(lambda p, c: decode(make_step(p), c, B, bos_id=BOS, eos_id=EOS, pad_id=PAD,
                                         options=BEAM, return_all_beams=True))
    full = [steps_taken(run_on, p, cache) for p in params]
  early = [steps_taken(run, p, cache, BEAM, return_all_beams=True) for p in params]
  for (want, n_full), (got, n_early) in zip(full, early):
    assert n_full == L and n_early <= L
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.lengths, want.lengths)
    # one program with the exit, one without: the same scores up to fusion (a rounding or two)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6)
  assert min(n for _, n in early) < L  # the exit did happen


@pytest.mark.cross_path
@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_finds_brute_force_optimum(alpha):
  """V=4, max_len=4: 36 beams hold every prefix and every candidate, so beam search is exact."""
  vocab, max_len, min_len, rows = 4, 4, 1, 2
  o = DecodeOptions(method="beam", beam_size=36, max_len=max_len, min_len=min_len, length_penalty=alpha)
  for seed, parts in enumerate([("markov",), ("position",), ("history",), ALL_PARTS, ALL_PARTS]):
    params = random_params(10 + seed, parts, vocab=vocab, rows=rows, max_len=max_len, eos_bias=0.5)
    out = jax.device_get(run(params, init_cache(rows, max_len), o))
    for r in range(rows):
      score, best = np_brute_force(params, r, max_len, min_len, alpha, vocab)
      assert out.tokens[r].tolist() == padded(best, max_len), (parts, r)
      assert out.lengths[r] == len(best)
      # float32 scores vs a float64 brute force: a few roundings a step, 4 steps
      np.testing.assert_allclose(out.scores[r], score, rtol=1e-5)


def beam_replay_errors(out, params, alpha):
  """|reported - replayed score| of every returned beam."""
  return np.array([out.scores[r, k] - np_score(params, r, out.tokens[r, k, :n].tolist(), alpha)
                   for (r, k), n in np.ndenumerate(out.lengths)])


@pytest.mark.cross_path
def test_beam_cache_follows_beams():
  """Every returned beam's score replays from its tokens: the history leaf moved with the beams."""
  params = random_params(20, ("history",), eos_bias=0.5)
  out = jax.device_get(run(params, init_cache(B), BEAM, return_all_beams=True))
  assert out.tokens.shape == (B, 4, L) and out.scores.shape == out.lengths.shape == (B, 4)
  assert (np.diff(out.scores, axis=1) <= 0).all()  # best first
  # float32 scores vs their float64 replay: a few roundings a step, 12 steps (scores ~ -10)
  np.testing.assert_allclose(beam_replay_errors(out, params, BEAM.length_penalty), 0, atol=1e-5)
  for toks, n in zip(out.tokens.reshape(-1, L).tolist(), out.lengths.ravel().tolist()):
    assert toks[n:] == [PAD] * (L - n) and EOS not in toks[:n - 1]


# ---------------------------------------------------------------- sampling


def np_filtered_probs(logits, temperature, top_k, top_p):
  z = logits.astype(np.float64) / temperature
  if top_k:
    z = np.where(z < np.sort(z)[-top_k], -np.inf, z)
  probs = np.exp(z - z.max())
  probs /= probs.sum()
  order = np.argsort(-probs)
  mass_before = np.cumsum(probs[order]) - probs[order]
  keep = np.zeros_like(probs, bool)
  keep[order[mass_before < top_p]] = True
  probs = np.where(keep, probs, 0.0)
  return probs / probs.sum()


@pytest.mark.parametrize("temperature,top_k,top_p,kept", [(1.0, 0, 0.7, 3), (2.0, 5, 0.8, 4)])
def test_sampling_distribution(temperature, top_k, top_p, kept):
  """The first token of 20000 samples follows softmax(logits / T) cut to the top-k and nucleus."""
  n = 20000
  first = np.log([0.35, 0.25, 0.15, 0.12, 0.08, 0.05])
  params = random_params(0, parts=(), rows=n, max_len=1)
  params["markov"][:] = first
  params["row_bias"][:] = 0
  o = DecodeOptions(method="sample", max_len=1, min_len=0, temperature=temperature, top_k=top_k, top_p=top_p)
  out = run(params, init_cache(n, 1), o, rng=jax.random.key(1))
  freq = np.bincount(np.asarray(out.tokens[:, 0]), minlength=V) / n
  expected = np_filtered_probs(first, temperature, top_k, top_p)
  assert (expected > 0).sum() == kept  # the cut is not vacuous
  assert (freq[expected == 0] == 0).all()  # nothing outside the top-k / nucleus, ever
  np.testing.assert_allclose(freq, expected, atol=0.015)


@pytest.mark.cross_path
def test_sampling_top_k_1_is_greedy():
  params = random_params(6, eos_bias=1.0)
  greedy = run(params, init_cache(B), GREEDY)
  top1 = DecodeOptions(method="sample", max_len=L, top_k=1, temperature=0.8)
  sampled = run(params, init_cache(B), top1, rng=jax.random.key(3))
  np.testing.assert_array_equal(sampled.tokens, greedy.tokens)
  # the same log-probs through other ops (sampling bookkeeping vs argmax): a rounding or two
  np.testing.assert_allclose(sampled.scores, greedy.scores, rtol=1e-6)


@pytest.mark.cross_path
def test_sampling_is_deterministic_given_rng():
  params = random_params(7)
  a, b, c = (jax.device_get(run(params, init_cache(B), SAMPLE, rng=jax.random.key(s))) for s in (0, 0, 1))
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert (a.tokens != c.tokens).any()
  for r in range(B):  # scores are the model's log-probs (T = 1, unfiltered) of the drawn tokens
    # float32 log-softmax per step vs a float64 replay of the tokens: a few roundings a step
    np.testing.assert_allclose(a.scores[r], np_score(params, r, a.tokens[r, :a.lengths[r]].tolist()),
                               rtol=1e-5)


# ---------------------------------------------------------------- jit, eager, mesh


@pytest.mark.cross_path
def test_eager_call_matches_jit():
  params = random_params(8)
  eager = decode(make_step(params), jax.tree.map(jnp.asarray, init_cache(B)), B,
                 bos_id=BOS, eos_id=EOS, pad_id=PAD, options=GREEDY)
  jitted = run(params, init_cache(B), GREEDY)
  np.testing.assert_array_equal(eager.tokens, jitted.tokens)
  # op by op vs one fused program: XLA fuses exp / log differently (a rounding or two)
  np.testing.assert_allclose(eager.scores, jitted.scores, rtol=1e-6)


@pytest.mark.cross_path
@pytest.mark.parametrize("options", [GREEDY, BEAM, SAMPLE], ids=lambda o: o.method)
def test_sharded_batch_matches_unsharded(options):
  """Cache sharded over data x fsdp (8 devices): same result, and no data moves between shards."""
  mesh = make_mesh({"data": 2, "fsdp": 4})
  params, key = random_params(9, eos_bias=0.5), jax.random.key(0)
  sharded = jax.tree.map(lambda x: jax.device_put(x, batch_sharding(mesh, x.ndim)), init_cache(B))
  compiled = run.lower(params, sharded, options, rng=key).compile()
  # The only collective is the all-reduce of "is every sequence done?" in the loop condition.
  assert not re.findall(r"all-gather|all-to-all|collective-permute|reduce-scatter", compiled.as_text())
  got = compiled(params, sharded, rng=key)
  assert got.tokens.sharding.is_equivalent_to(batch_sharding(mesh, 2), 2)
  want = run(params, init_cache(B), options, rng=key)
  np.testing.assert_array_equal(got.tokens, want.tokens)
  np.testing.assert_array_equal(got.lengths, want.lengths)
  # rows split over devices: each row's sums stay its own; other per-device shapes, other kernels
  np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs,message", [
    (dict(beam_size=0), "beam_size=0"),
    (dict(top_p=0.0), "top_p=0.0"),
    (dict(top_p=1.5), "top_p=1.5"),
    (dict(max_len=2, min_len=3), r"min_len=3 .*max_len=2"),
    (dict(max_len=0, min_len=0), "max_len=0"),
    (dict(min_len=-1), "min_len=-1"),
    (dict(temperature=0.0), "temperature=0.0"),
    (dict(method="nucleus"), "method='nucleus'"),
    (dict(top_k=-1), "top_k=-1"),
    (dict(length_penalty=-0.5), "length_penalty=-0.5"),
    (dict(beams=4), "beams=4.*valid names: .*beam_size"),
])
def test_bad_options_raise(kwargs, message):
  with pytest.raises(ValueError, match=message):
    DecodeOptions.from_kwargs(**kwargs)


def test_bad_decode_calls_raise():
  params, cache = random_params(0), init_cache(B)
  with pytest.raises(ValueError, match=r"top_k=7 .*vocab_size=6"):
    run(params, cache, DecodeOptions(method="sample", top_k=7), rng=jax.random.key(0))
  with pytest.raises(ValueError, match="rng"):
    run(params, cache, SAMPLE)
  with pytest.raises(ValueError, match="return_all_beams"):
    run(params, cache, GREEDY, return_all_beams=True)
  with pytest.raises(ValueError, match="batch_size=3"):
    decode(make_step(params), cache, 3, bos_id=BOS, eos_id=EOS, pad_id=PAD, options=GREEDY)
