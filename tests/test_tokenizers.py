"""Tokenizers: the [BOS] ... [EOS] [PAD] layout, round trips, truncation, every backend."""

import numpy as np
import pytest
import sentencepiece as spm
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from vljax.data import shapes
from vljax.data.tokenizers import (HuggingFaceTokenizer, SentencePieceTokenizer, ShapesTokenizer,
                                   get_tokenizer)

TEXTS = ["a large red circle to the left of a small blue star", "there is a green heart in the top right",
         "how many objects are there"]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
  world = shapes.ShapesWorld(seed=0)
  return [world.example(i)["caption"] for i in range(300)] + TEXTS


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory, corpus) -> str:
  """Default sentencepiece ids: unk 0, bos 1, eos 2, no pad."""
  d = tmp_path_factory.mktemp("sp")
  (d / "text.txt").write_text("\n".join(corpus))
  spm.SentencePieceTrainer.train(input=str(d / "text.txt"), model_prefix=str(d / "m"), vocab_size=60,
                                 model_type="unigram", character_coverage=1.0, minloglevel=2)
  return str(d / "m.model")


@pytest.fixture(scope="module")
def sp_t5_model(tmp_path_factory, corpus) -> str:
  """T5-style ids: pad 0, eos 1, unk 2, no bos."""
  d = tmp_path_factory.mktemp("sp_t5")
  (d / "text.txt").write_text("\n".join(corpus))
  spm.SentencePieceTrainer.train(input=str(d / "text.txt"), model_prefix=str(d / "m"), vocab_size=60,
                                 pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
                                 minloglevel=2)
  return str(d / "m.model")


@pytest.fixture(scope="module")
def hf_wordlevel(tmp_path_factory, corpus) -> str:
  tok = tokenizers.Tokenizer(models.WordLevel(unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
  tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=specials))
  path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
  tok.save(str(path))
  return str(path)


@pytest.fixture(scope="module")
def hf_bpe_no_specials(tmp_path_factory, corpus) -> str:
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  path = tmp_path_factory.mktemp("hf_bpe") / "tokenizer.json"
  tok.save(str(path))
  return str(path)


def _all_backends(sp_model, sp_t5_model, hf_wordlevel, hf_bpe_no_specials):
  return [ShapesTokenizer(), SentencePieceTokenizer(sp_model), SentencePieceTokenizer(sp_t5_model),
          HuggingFaceTokenizer(hf_wordlevel), HuggingFaceTokenizer(hf_bpe_no_specials)]


@pytest.fixture(scope="module")
def backends(sp_model, sp_t5_model, hf_wordlevel, hf_bpe_no_specials):
  return _all_backends(sp_model, sp_t5_model, hf_wordlevel, hf_bpe_no_specials)


def test_layout_and_round_trip(backends):
  for tok in backends:
    ids = tok.encode(TEXTS, max_len=40)
    assert ids.shape == (3, 40) and ids.dtype == np.int32, type(tok)
    assert tok.pad_id == 0 and len({tok.pad_id, tok.bos_id, tok.eos_id}) == 3
    assert ids.min() >= 0 and ids.max() < tok.vocab_size
    assert (ids[:, 0] == tok.bos_id).all()
    last = (ids != tok.pad_id).sum(1) - 1
    np.testing.assert_array_equal(last, np.argmax(ids == tok.eos_id, axis=1))
    assert ((ids == tok.eos_id).sum(1) == 1).all()
    assert (ids[np.arange(40)[None] > last[:, None]] == tok.pad_id).all()
    assert tok.decode(ids) == TEXTS, type(tok)
    assert tok.decode(ids[0]) == TEXTS[:1]


def test_truncation_keeps_eos(backends):
  for tok in backends:
    ids = tok.encode(TEXTS, max_len=5)
    assert (ids[:, 0] == tok.bos_id).all() and (ids[:, -1] == tok.eos_id).all(), type(tok)
    assert (ids[:, 1:-1] != tok.pad_id).all()
    assert tok.encode([""], max_len=4).tolist() == [[tok.bos_id, tok.eos_id, 0, 0]]
  with pytest.raises(ValueError, match="max_len=1"):
    ShapesTokenizer().encode(["a"], max_len=1)


def test_decode_stops_at_eos_and_skips_specials():
  tok = ShapesTokenizer()
  ids = tok.encode(["a red circle"], max_len=8)[0]
  garbage = np.concatenate([ids[:4], [tok.eos_id], tok.encode(["blue star"], 4)[0][1:3]])
  assert tok.decode(garbage[None]) == ["a red circle"]
  assert tok.decode([[tok.pad_id, tok.bos_id, *ids[1:4]]]) == ["a red circle"]


def test_shapes_tokenizer_words_punctuation_and_unknowns():
  tok = ShapesTokenizer()
  assert tok.vocab_size == len(shapes.VOCAB) + 4 + 2  # + <pad> <bos> <eos> <unk>, + <image> <eoc>
  a, b = tok.encode(["A photo of a red circle.", "a photo of a red circle"], 12)
  np.testing.assert_array_equal(a, b)
  ids = tok.encode(["what color is the circle? zebra"], 12)[0]
  assert tok.unk_id in ids.tolist()
  assert tok.decode(ids[None]) == ["what color is the circle <unk>"]
  world = shapes.ShapesWorld(seed=0)
  captions = [world.example(i)["caption"] for i in range(500)]
  assert tok.unk_id not in tok.encode(captions, shapes.MAX_CAPTION_WORDS + 2)
  assert tok.decode(tok.encode(captions, shapes.MAX_CAPTION_WORDS + 2)) == captions


def test_special_ids_of_each_backend(sp_model, sp_t5_model, hf_wordlevel, hf_bpe_no_specials):
  sp = SentencePieceTokenizer(sp_model)  # no pad in the model: everything shifts by one
  assert (sp.bos_id, sp.eos_id, sp.vocab_size) == (2, 3, 61 + 2)  # + <image> <eoc> after all others
  assert (sp.image_id, sp.eoc_id) == (61, 62)
  t5 = SentencePieceTokenizer(sp_t5_model)  # pad 0 already; bos appended
  assert (t5.eos_id, t5.bos_id, t5.vocab_size) == (1, 60, 63)
  hf = HuggingFaceTokenizer(hf_wordlevel)
  assert (hf.bos_id, hf.eos_id) == (2, 3) and hf.vocab_size == hf.tok.get_vocab_size() + 2
  bpe = HuggingFaceTokenizer(hf_bpe_no_specials)
  n = bpe.tok.get_vocab_size()
  assert (bpe.bos_id, bpe.eos_id, bpe.vocab_size) == (n + 1, n + 2, n + 5)


def test_image_and_end_of_chunk_tokens_in_every_backend(sp_model, hf_bpe_no_specials):
  text = "<image> a red circle<eoc><image> a blue star"
  for tok in (ShapesTokenizer(), SentencePieceTokenizer(sp_model), HuggingFaceTokenizer(hf_bpe_no_specials)):
    ids = tok.encode([text], 32)[0].tolist()
    assert ids[1] == tok.image_id and ids.count(tok.image_id) == 2 and ids.count(tok.eoc_id) == 1, type(tok)
    assert max(ids) < tok.vocab_size
    decoded = tok.decode([ids])[0]
    assert decoded.startswith("<image> ") and decoded.count("<image>") == 2 and "<eoc>" in decoded, decoded
  assert ShapesTokenizer().decode(ShapesTokenizer().encode([text], 32)) == [
      "<image> a red circle <eoc> <image> a blue star"]


def test_get_tokenizer_specs_and_errors(sp_model, hf_wordlevel, tmp_path):
  assert isinstance(get_tokenizer("shapes"), ShapesTokenizer)
  assert isinstance(get_tokenizer(f"sentencepiece:{sp_model}"), SentencePieceTokenizer)
  assert isinstance(get_tokenizer(f"hf:{hf_wordlevel}"), HuggingFaceTokenizer)
  with pytest.raises(ValueError, match="'bert'.*sentencepiece:"):
    get_tokenizer("bert")
  missing = str(tmp_path / "nope.model")
  with pytest.raises(FileNotFoundError, match="nope.model"):
    get_tokenizer(f"sentencepiece:{missing}")
  with pytest.raises(FileNotFoundError, match="nope.json"):
    get_tokenizer(f"hf:{tmp_path / 'nope.json'}")
  bad = tmp_path / "bad.json"
  bad.write_text("not json")
  with pytest.raises(ValueError, match="bad.json"):
    HuggingFaceTokenizer(str(bad))
  with pytest.raises(ValueError, match="bad.json"):
    SentencePieceTokenizer(str(bad))
