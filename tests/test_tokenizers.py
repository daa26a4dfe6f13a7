"""Tokenizers: the [BOS] ... [EOS] [PAD] layout and its options, round trips, truncation, every backend.

The CLIP BPE is checked token for token against transformers' CLIPTokenizer and the SigLIP layout
against transformers' SiglipTokenizer, both built from the same small files written here.
"""

import collections
import gzip
import html
import json
import pickle

import numpy as np
import pytest
import regex
import sentencepiece as spm
import tokenizers
import transformers
from tokenizers import decoders, models, pre_tokenizers, trainers

from vljax.data import shapes
from vljax.data.tokenizers import (BpeTokenizer, HuggingFaceTokenizer, SentencePieceTokenizer, ShapesTokenizer,
                                   canonicalize, get_tokenizer, parse_spec)

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


def _clip_byte_table() -> dict[int, str]:
  """GPT-2 / CLIP's byte -> character table in vocabulary order: the printable non-space bytes as
  themselves, then the other bytes as chr(256), chr(257), ..."""
  keep = [b for b in range(256) if chr(b).isprintable() and not chr(b).isspace()]
  others = [b for b in range(256) if b not in keep]
  return {**{b: chr(b) for b in keep}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def _clip_words(text: str) -> list[list[str]]:
  """CLIP's words of lower-cased text as byte characters, the last one marked with </w>."""
  table = _clip_byte_table()
  words = []
  for word in regex.findall(r"'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+", text.lower()):
    chars = [table[b] for b in word.encode("utf-8")]
    words.append(chars[:-1] + [chars[-1] + "</w>"])
  return words


def _train_merges(texts: list[str], n: int) -> list[tuple[str, str]]:
  """A few BPE merges learnt greedily (most frequent pair first) from texts."""
  words = collections.Counter(tuple(w) for t in texts for w in _clip_words(t))
  merges = []
  for _ in range(n):
    pairs = collections.Counter()
    for word, count in words.items():
      for pair in zip(word, word[1:]):
        pairs[pair] += count
    if not pairs:
      break
    best = max(pairs, key=lambda p: (pairs[p], p))
    merges.append(best)
    merged = collections.Counter()
    for word, count in words.items():
      out, i = [], 0
      while i < len(word):
        if word[i:i + 2] == best:
          out.append(word[i] + word[i + 1])
          i += 2
        else:
          out.append(word[i])
          i += 1
      merged[tuple(out)] += count
    words = merged
  return merges


BPE_EXTRA = ["it's a dog's toy and they're sure we'll see what i'd've done", "naïve café in 東京 with 🐱",
             "123 456 7890 dollars, cents; 3.50!"]


@pytest.fixture(scope="module")
def bpe_merges(corpus) -> list[tuple[str, str]]:
  return _train_merges(corpus + BPE_EXTRA * 5, 150)


@pytest.fixture(scope="module")
def bpe_file(tmp_path_factory, bpe_merges) -> str:
  """A small bpe_simple_vocab_16e6.txt.gz: header line, one merge per line."""
  path = tmp_path_factory.mktemp("bpe") / "bpe_small.txt.gz"
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.write('"bpe_simple_vocab_16e6.txt#version: 0.2\n' + "".join(f"{a} {b}\n" for a, b in bpe_merges))
  return str(path)


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory, bpe_merges):
  """transformers' CLIPTokenizer over the same merges, with open_clip's vocabulary layout."""
  chars = list(_clip_byte_table().values())
  vocab = [*chars, *(c + "</w>" for c in chars), *(a + b for a, b in bpe_merges), "<|startoftext|>",
           "<|endoftext|>"]
  d = tmp_path_factory.mktemp("hf_clip")
  (d / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
  (d / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in bpe_merges))
  return transformers.CLIPTokenizer.from_pretrained(str(d))


def _all_backends(sp_model, sp_t5_model, hf_wordlevel, hf_bpe_no_specials, bpe_file, **options):
  return [ShapesTokenizer(**options), SentencePieceTokenizer(sp_model, **options),
          SentencePieceTokenizer(sp_t5_model, **options), HuggingFaceTokenizer(hf_wordlevel, **options),
          HuggingFaceTokenizer(hf_bpe_no_specials, **options), BpeTokenizer(bpe_file, **options)]


@pytest.fixture(scope="module")
def backends(sp_model, sp_t5_model, hf_wordlevel, hf_bpe_no_specials, bpe_file):
  return _all_backends(sp_model, sp_t5_model, hf_wordlevel, hf_bpe_no_specials, bpe_file)


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


@pytest.mark.parametrize("bos", ["add", "none"])
def test_truncation_keeps_eos_and_the_first_content_tokens(bos, sp_model, sp_t5_model, hf_wordlevel,
                                                           hf_bpe_no_specials, bpe_file):
  head = 1 if bos == "add" else 0
  for tok in _all_backends(sp_model, sp_t5_model, hf_wordlevel, hf_bpe_no_specials, bpe_file, bos=bos):
    ids = tok.encode(TEXTS, max_len=5)
    assert (ids[:, -1] == tok.eos_id).all() and ((ids == tok.eos_id).sum(1) == 1).all(), type(tok)
    assert (ids[:, 0] == tok.bos_id).all() == (bos == "add")
    for row, text in zip(ids.tolist(), TEXTS):
      assert row[head:-1] == tok.content_ids(text)[:4 - head], type(tok)
    assert tok.encode([""], max_len=4).tolist() == [[tok.bos_id] * head + [tok.eos_id] + [0] * (3 - head)]
    assert tok.encode(["a red circle"], max_len=1 + head).tolist() == [[tok.bos_id] * head + [tok.eos_id]]
    with pytest.raises(ValueError, match=f"max_len={head}"):
      tok.encode(["a"], max_len=head)


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


def test_special_ids_of_each_backend(sp_model, sp_t5_model, hf_wordlevel, hf_bpe_no_specials, bpe_file,
                                     bpe_merges):
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
  clip = BpeTokenizer(bpe_file)  # id 0 is "!": everything shifts by one; BOS/EOS are the file's last two
  n = 512 + len(bpe_merges) + 2
  assert (clip.id_offset, clip.bos_id, clip.eos_id, clip.vocab_size) == (1, n - 1, n, n + 1 + 2)


def test_image_and_end_of_chunk_tokens_in_every_backend(sp_model, hf_bpe_no_specials, bpe_file):
  text = "<image> a red circle<eoc><image> a blue star"
  for tok in (ShapesTokenizer(), SentencePieceTokenizer(sp_model), HuggingFaceTokenizer(hf_bpe_no_specials),
              BpeTokenizer(bpe_file), BpeTokenizer(bpe_file, clean="canonicalize")):
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


# --- Layout options ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bos", ["add", "none"])
def test_pad_eos_fills_the_row_with_eos(bos, sp_model, sp_t5_model, hf_wordlevel, hf_bpe_no_specials,
                                        bpe_file):
  for tok in _all_backends(sp_model, sp_t5_model, hf_wordlevel, hf_bpe_no_specials, bpe_file, bos=bos,
                           pad="eos"):
    ids = tok.encode(TEXTS + [""], max_len=40)
    first_eos = np.argmax(ids == tok.eos_id, axis=1)
    assert (ids[np.arange(40)[None] >= first_eos[:, None]] == tok.eos_id).all(), type(tok)
    assert (ids != tok.pad_id).all() and tok.fill_id == tok.eos_id  # the final position is always EOS
    assert (ids[:, 0] == tok.bos_id).all() == (bos == "add")
    assert tok.decode(ids) == TEXTS + [""], type(tok)
    short = tok.encode(TEXTS, max_len=4)
    assert (short[:, -1] == tok.eos_id).all() and ((short == tok.eos_id).sum(1) == 1).all()


def test_explicit_default_options_give_the_default_layout(sp_model):
  default = SentencePieceTokenizer(sp_model).encode(TEXTS, 12)
  np.testing.assert_array_equal(SentencePieceTokenizer(sp_model, bos="add", pad="zero", clean="none").encode(
      TEXTS, 12), default)
  np.testing.assert_array_equal(get_tokenizer(f"sentencepiece:{sp_model}?bos=add&pad=zero").encode(TEXTS, 12),
                                default)


def test_siglip_layout_matches_transformers_siglip_tokenizer(sp_t5_model):
  """big_vision's SigLIP rows: no BOS, EOS-padded, canonical text; HF pads with its "</s>" too."""
  ours = get_tokenizer(f"sentencepiece:{sp_t5_model}?bos=none&pad=eos&clean=canonicalize")
  hf = transformers.SiglipTokenizer(vocab_file=sp_t5_model)
  texts = ["A Red circle, to the LEFT of a  blue star!", "there is a green heart\tin the top right",
           "how many? objects... are there", "", "a" * 40, "Zebra, (xylophone) & 123"]
  for max_len in (16, 6, 1):
    expected = hf(texts, padding="max_length", max_length=max_len, truncation=True)["input_ids"]
    assert ours.encode(texts, max_len).tolist() == expected, max_len
  assert ours.decode(ours.encode(texts[:2], 40)) == ["a red circle to the left of a blue star",
                                                     "there is a green heart in the top right"]
  for text in texts + ["it's \"quoted\" — don't; 3.5%", "  UPPER\n\ncase  "]:
    assert canonicalize(text) == hf.canonicalize_text(text)


# --- CLIP BPE ---------------------------------------------------------------------------------------

TRICKY = ["Hello, World!", "it's a dog's toy; they're sure we'll see what I'd've done", "IT'S THE DOG'S BONE",
          "don't won't can't l'été", "12345 apples cost $3.50 (4.5%)", "naïve café — 東京タワー 🐱🐶",
          "cafe\u0301 and café", "Tom &amp; Jerry &lt;3 &amp;amp; &#39;quoted&#39;", "  lots   of\t\nspace  ",
          "", "a", "!!!???...", "e-mail: someone@example.org", "a red circle to the left of a small blue star",
          "x" * 60, "a\u00a0b\u2003c"]


def test_bpe_matches_transformers_clip_tokenizer(bpe_file, hf_clip):
  ours = BpeTokenizer(bpe_file)
  for text in TRICKY:
    # CLIPTokenizer normalises (NFC, whitespace, lower case) but does not unescape HTML as open_clip does.
    hf_text = html.unescape(html.unescape(text))
    hf_ids = hf_clip.encode(hf_text, add_special_tokens=False)
    assert ours.content_ids(text) == [i + 1 for i in hf_ids], text
    for max_len in (77, 6):
      expected = [i + 1 for i in hf_clip(hf_text, max_length=max_len, truncation=True)["input_ids"]]
      row = ours.encode([text], max_len)[0].tolist()
      assert row == expected + [0] * (max_len - len(expected)), (text, max_len)
    assert ours.decode(ours.encode([text], 77)) == [hf_clip.decode(hf_ids)], text


def test_bpe_vocabulary_layout_is_open_clips(bpe_file, tmp_path):
  tok = BpeTokenizer(bpe_file)
  # open_clip's ids + 1: "!" is 0 and "!</w>" 256, "a</w>" 320; "ā" is the bytes c4 81, where c4 is the
  # 129th byte character and 81 (not printable) the 224th.
  assert tok.content_ids("!") == [256 + 1] and tok.content_ids("a") == [320 + 1]
  assert tok.content_ids("Ā") == [128 + 1, 256 + 223 + 1]
  assert tok.decode(tok.encode(["Ā"], 4)) == ["ā"]
  # A full-size file: open_clip reads 49152 - 256 - 2 merges and ignores the rest of the file.
  table = list(_clip_byte_table().values())
  lines = [f"{a} {b}" for a in table for b in table][:50_000]
  full = tmp_path / "bpe_full.txt"
  full.write_text("#version: 0.2\n" + "\n".join(lines) + "\n")
  tok = get_tokenizer(f"bpe:{full}")
  assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (49406 + 1, 49407 + 1, 49408 + 1 + 2)
  assert (tok.image_id, tok.eoc_id) == (49409, 49410)


def test_bpe_plain_text_file_and_pickle(bpe_file, tmp_path):
  plain = tmp_path / "bpe.txt"
  plain.write_bytes(gzip.decompress(open(bpe_file, "rb").read()))
  a, b = BpeTokenizer(bpe_file), get_tokenizer(f"bpe:{plain}")
  np.testing.assert_array_equal(a.encode(TRICKY, 20), b.encode(TRICKY, 20))
  c = pickle.loads(pickle.dumps(a))  # grain workers receive the tokenizer pickled
  np.testing.assert_array_equal(a.encode(TRICKY, 20), c.encode(TRICKY, 20))


def test_bpe_cleaning_options(bpe_file):
  clip = BpeTokenizer(bpe_file)
  same = ["a photo of a red circle", "  A   Photo of a\nRED circle ", "a photo of a red circle"]
  assert len({tuple(clip.content_ids(t)) for t in same}) == 1
  assert clip.content_ids("tom &amp;amp; jerry") == clip.content_ids("tom & jerry")
  assert clip.content_ids("cafe\u0301") == clip.content_ids("café")
  raw = BpeTokenizer(bpe_file, clean="none")
  assert raw.content_ids("A") != raw.content_ids("a") and raw.content_ids("a b") == clip.content_ids("A  B")
  assert raw.content_ids("&amp;") != raw.content_ids("&")
  canon = get_tokenizer(f"bpe:{bpe_file}?clean=canonicalize")
  assert canon.content_ids("A red, circle!") == clip.content_ids("a red circle")
  # Text that spells the special tokens stays text: one EOS per row, at its end.
  ids = clip.encode(["a <|endoftext|> b <|startoftext|>"], 32)[0]
  assert (ids == clip.eos_id).sum() == 1 and (ids == clip.bos_id).sum() == 1
  assert clip.decode(ids[None]) == ["a <| endoftext |> b <| startoftext |>"]


def test_bpe_file_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.txt.gz"):
    get_tokenizer(f"bpe:{tmp_path / 'missing.txt.gz'}")
  cases = {"binary.txt": b"\xff\xfe\x00garbage", "broken.txt.gz": b"\x1f\x8b\x08not really gzip",
           "header_only.txt": b"#version: 0.2\n", "three_parts.txt": b"#version: 0.2\na b\nc d e\n"}
  for name, data in cases.items():
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
      BpeTokenizer(str(tmp_path / name))
  with pytest.raises(ValueError, match="line 3"):
    BpeTokenizer(str(tmp_path / "three_parts.txt"))


# --- Spec strings -----------------------------------------------------------------------------------


def test_spec_options_parse_and_apply(sp_t5_model, bpe_file):
  assert parse_spec("shapes") == ("shapes", "", {})
  assert parse_spec("sentencepiece:/p/spm.model?bos=none&pad=eos&clean=canonicalize") == (
      "sentencepiece", "/p/spm.model", {"bos": "none", "pad": "eos", "clean": "canonicalize"})
  tok = get_tokenizer(f"sentencepiece:{sp_t5_model}?bos=none&pad=eos&clean=canonicalize")
  assert (tok.add_bos, tok.pad_with_eos, tok.clean) == (False, True, "canonicalize")
  assert get_tokenizer(f"bpe:{bpe_file}").clean == "clip"
  assert get_tokenizer(f"sentencepiece:{sp_t5_model}").clean == "none"
  shapes_tok = get_tokenizer("shapes?bos=none&pad=eos")
  assert shapes_tok.encode(["a red circle"], 5).tolist() == [shapes_tok.content_ids("a red circle") + [2, 2]]


def test_bad_spec_errors(sp_t5_model, bpe_file):
  bad = {"bpe": "'bpe'.*bpe:/path", "shapes:/x": "'shapes:/x'.*valid forms",
         f"bpe:{bpe_file}?eos=sticky": "'eos'.*valid options are bos, pad, clean",
         f"bpe:{bpe_file}?pad=one": "pad='one'.*valid values for pad are zero, eos",
         f"bpe:{bpe_file}?clean=ftfy": "clean='ftfy'.*none, clip, canonicalize",
         f"bpe:{bpe_file}?bos": "'bos'.*not KEY=VALUE", f"bpe:{bpe_file}?bos=none&": "'' .*not KEY=VALUE",
         f"bpe:{bpe_file}?bos=none&bos=add": "'bos' is given twice"}
  for spec, message in bad.items():
    with pytest.raises(ValueError, match=message):
      get_tokenizer(spec)
  with pytest.raises(ValueError, match="bos='no'.*add, none"):
    SentencePieceTokenizer(sp_t5_model, bos="no")
