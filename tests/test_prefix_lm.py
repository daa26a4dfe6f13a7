"""The image-conditioned encoder-decoder LM (model "prefix_lm", BLIP-2's FlanT5 form): the loss mask
splits a sequence into the encoder's prefix and the decoder's target, teacher-forced logits equal the
two halves run by hand, KV-cached generation equals greedy recomputation, a Q-Former bridge trains
into a frozen T5 (with the VQA evaluator on it), and bad configs name the value."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vljax
from conftest import tiny_config
from random_workdirs import write_random_workdir
from vljax.data import prompts, shapes, tokenizers
from vljax.metrics import read_metrics
from vljax.models import get_model, prefix_lm, seq2seq_lm
from vljax.models.resolve import resolve_model_config

TOK = tokenizers.get_tokenizer("shapes")
T5 = dict(vocab_size=128, width=32, depth=1, num_heads=2, head_dim=16, mlp_dim=64, relative_buckets=8,
          relative_max_distance=20)
QFORMER = dict(variant="mu", depth=1, num_queries=4)


def _config(**model):
  cfg = tiny_config(evals={}, total_steps=3, checkpoint=dict(every=3, keep=1, async_save=False))
  cfg.model = dict(dict(name="prefix_lm", image=dict(variant="mu/8", posemb="sincos2d"), lm=T5,
                        projector="qformer", qformer=QFORMER), **model)
  cfg.objectives = {"captioning": 1.0}
  cfg.data.update(format="vlm", chunks=1, max_len=32, image_size=16)
  return cfg


@pytest.fixture(scope="module")
def built():
  cfg = _config()
  model = get_model(resolve_model_config(cfg, TOK))
  world = shapes.ShapesWorld(seed=0, image_size=16)
  chunks = [[prompts.vqa_chunk("what color is the circle?", "red")], [prompts.caption_chunk("a blue star")]]
  ids, mask = prompts.encode_chunks(TOK, chunks, 32)
  images = jnp.asarray(np.stack([world.example(i, split="eval")["image"] for i in range(2)])[:, None] / 255.0,
                       jnp.float32)
  params = model.init(jax.random.PRNGKey(0), images, jnp.asarray(ids), jnp.asarray(mask))["params"]
  return model, params, images, ids, mask


def test_teacher_forced_logits_are_the_prefix_encoded_and_the_target_decoded(built):
  model, params, images, ids, mask = built
  memory = model.apply({"params": params}, images, method="encode_image")["memory"]
  logits = model.apply({"params": params}, memory, jnp.asarray(ids), jnp.asarray(mask), method="caption_logits")
  assert logits.shape == (*ids.shape, 128)
  for b in range(len(ids)):
    split = int(np.argmax(mask[b]))
    n = int(np.sum(ids[b] != 0))
    # By hand: the soft prompt in place of <image>, the text after it up to the split, no BOS.
    at = int(np.argmax(ids[b] == TOK.image_id))
    prefix = jnp.concatenate([memory[b:b + 1, 0], model.apply({"params": params}, jnp.asarray(ids[b:b + 1, at + 1:split]),
                                                             method="embed")], axis=1)
    hidden = model.apply({"params": params}, prefix, jnp.ones(prefix.shape[:2], bool), method="encode_embeddings")
    targets = jnp.asarray(ids[b:b + 1, split:n])
    want = model.apply({"params": params}, hidden, jnp.ones(prefix.shape[:2], bool), seq2seq_lm.shift_right(targets),
                       method="decode_logits")
    # Position t of ids predicts ids[t + 1]: the target's logits sit at split - 1 .. n - 2.
    np.testing.assert_allclose(logits[b, split - 1:n - 1], want[0], atol=2e-5)
    assert not np.any(np.asarray(logits[b, :split - 1]))  # the prefix predicts nothing


def test_generation_with_the_cache_equals_greedy_recompute(built, tmp_path):
  cfg = _config()
  run = write_random_workdir(str(tmp_path / "run"), cfg, seed=4)
  model = vljax.load(run)
  world = shapes.ShapesWorld(seed=0, image_size=16)
  images = [world.example(i, split="eval")["image"] for i in range(2)]
  questions = ["question: what color is the circle? answer:", "caption:"]
  got = model.generate(images, questions, max_new_tokens=6)
  # By hand: encode each prompt, then argmax of the teacher-forced decoder over what came so far.
  module, params = model.model, model.params
  ids, lengths = prompts.prompt_ids(TOK, [[("<image> " + q, "")] for q in questions], 32)
  memory = module.apply({"params": params}, model._images(images)[:, None], method="encode_image")["memory"]
  hidden, enc_mask = module.apply({"params": params}, memory, jnp.asarray(ids), jnp.asarray(lengths),
                                  method="encode_prompt")
  # One padded length, one compile: the decoder is causal, so what follows a position cannot change it.
  decode = jax.jit(lambda h, m, s: module.apply({"params": params}, h, m, s, method="decode_logits"))
  want = []
  for b in range(2):
    seq = [seq2seq_lm.START_ID]
    for _ in range(6):
      padded = jnp.asarray([seq + [0] * (7 - len(seq))])
      logits = decode(hidden[b:b + 1], enc_mask[b:b + 1], padded)
      seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
      if seq[-1] == TOK.eoc_id:
        break
    want.append(TOK.decode(prompts.cut_at_eoc(TOK, np.asarray([seq[1:]])))[0])
  assert got == want
  # Beam search of one beam is greedy; sampling draws its own continuations, the same for a seed.
  assert model.generate(images, questions, method="beam", beam_size=1, max_new_tokens=6) == got
  sampled = [model.generate(images, questions, method="sample", top_p=0.9, max_new_tokens=6, seed=3) for _ in range(2)]
  assert sampled[0] == sampled[1] and len(model.generate(images, questions, method="beam", beam_size=3,
                                                         max_new_tokens=6)) == 2


def test_a_qformer_bridge_trains_into_a_frozen_t5(tmp_path):
  from flax import traverse_util
  from vljax.checkpoint_io import load_params
  from vljax.train.trainer import train_and_evaluate
  cfg = _config()
  cfg.frozen = ("img/.*", "txt/.*", "encoder/.*", "decoder/.*", "logits/.*")
  cfg.evals = dict(vqa=dict(every=3, num_examples=8, shots=(0,), decode=dict(method="greedy", max_len=4)))
  init = str(tmp_path / "init")
  write_random_workdir(init, cfg, seed=5)
  cfg.init_from = dict(workdir="", subtree="", step=-1, sources=(f"{init}:img,txt,encoder,decoder,logits",))
  train_and_evaluate(cfg, str(tmp_path / "run"))
  before = traverse_util.flatten_dict(load_params(init)[0], sep="/")
  after = traverse_util.flatten_dict(load_params(str(tmp_path / "run"))[0], sep="/")
  for key in before:
    if key.startswith(("txt/", "encoder/", "decoder/", "img/")):
      np.testing.assert_array_equal(after[key], before[key], err_msg=key)
  assert not np.array_equal(after["qformer/queries"], before["qformer/queries"])
  series = read_metrics(str(tmp_path / "run"))
  assert np.isfinite(series["train/captioning_loss"][3]) and 0 <= series["eval/vqa/acc"][3] <= 1


@pytest.mark.parametrize("model, message", [
    (dict(qformer=None), r"prefix_lm projector='qformer' with qformer=None"),
    (dict(projector="mlp"), r"prefix_lm projector"),
    (dict(scan=True), r"prefix_lm loops T5's blocks: scan=True"),
    (dict(image=dict(variant="mu/8", pool="map")), r"prefix_lm reads the image tower's tokens"),
    (dict(lm=dict(T5, mlp="swiglu")), r"seq2seq_lm mlp"),
])
def test_bad_configs_name_the_value(model, message):
  with pytest.raises(ValueError, match=message):
    get_model(resolve_model_config(_config(**model), TOK))


def test_split_and_shift_by_hand():
  ids = jnp.asarray([[1, 9, 8, 7, 6, 2, 0, 0]])
  mask = jnp.asarray([[0, 0, 0, 1, 1, 1, 0, 0]], bool)
  split = prefix_lm.prefix_split(mask, ids)
  assert int(split[0]) == 3
  np.testing.assert_array_equal(prefix_lm.decoder_inputs(ids, split), [[0, 7, 6, 2, 0, 0, 0, 0]])
  assert int(prefix_lm.prefix_split(None, ids)[0]) == 6  # no mask: all prefix
  logits = jnp.arange(8)[None, :, None] * jnp.ones((1, 8, 2))
  placed = prefix_lm.at_text_positions(logits, split)
  np.testing.assert_array_equal(placed[0, :, 0], [0, 0, 0, 1, 2, 3, 4, 5])
