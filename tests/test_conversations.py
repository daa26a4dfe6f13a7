"""Visual instruction data (vljax/data/conversations.py): turns parsed and checked, laid out in vljax's
chunk words or the tokenizer folder's chat template (the same text as transformers' apply_chat_template),
the loss on assistant turns alone; the shapes world's conversations; LLaVA-style JSON records read by
the folder and array_record sources, bad ones skipped and counted."""

import json
import os

import numpy as np
import pytest
from absl import flags

from real_data import encode
from vljax.data import conversations, formats, pipeline, shapes, tokenizers
from vljax.data.formats import sequences
from vljax.data.sources import records, skips

if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags
  flags.FLAGS.mark_as_parsed()

TOK = tokenizers.ShapesTokenizer()
LLAVA = [{"from": "human", "value": "<image>\nwhat color is the star?"}, {"from": "gpt", "value": "red"},
         {"from": "human", "value": "how many shapes are there?"}, {"from": "gpt", "value": "two"}]
TURNS = [("user", "<image>\nwhat color is the star?"), ("assistant", "red"), ("user", "how many shapes are there?"),
         ("assistant", "two")]
# ChatML, as Qwen2's tokenizer_config.json has it (with its default system turn).
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_parse_reads_llava_and_chat_forms_and_refuses_what_is_not_a_conversation():
  assert conversations.parse(LLAVA) == TURNS
  chat = [{"role": r, "content": t} for r, t in TURNS]
  assert conversations.parse(chat) == conversations.parse(json.dumps(LLAVA)) == TURNS
  assert conversations.parse([("system", "be brief"), *TURNS])[0] == ("system", "be brief")
  bad = {
      "ends with the user": LLAVA[:3],
      "starts with the assistant": LLAVA[1:],
      "two user turns in a row": [LLAVA[0], LLAVA[2], LLAVA[1]],
      "empty text": [LLAVA[0], {"from": "gpt", "value": "  "}],
      "unknown role": [LLAVA[0], {"from": "bot", "value": "red"}],
      "two images": [LLAVA[0], LLAVA[1], {"from": "human", "value": "<image> and this?"}, LLAVA[3]],
      "image in a reply": [LLAVA[0], {"from": "gpt", "value": "<image>"}],
      "literal <eoc>": [LLAVA[0], {"from": "gpt", "value": "red<eoc>"}],
      "not a list": {"from": "human"}, "not JSON": "[{", "empty": [], "a number": 3,
  }
  for why, value in bad.items():
    assert conversations.parse(value) is None, why


def test_vljax_layout_puts_the_image_first_and_trains_the_replies_alone():
  assert conversations.pairs(TURNS, image=True) == [
      ("<image> question: what color is the star? answer:", " red<eoc>"),
      (" question: how many shapes are there? answer:", " two<eoc>")]
  # No <image> in the text: in front of the first user turn; image=False (the LM alone): none.
  plain = [(r, t.replace("<image>\n", "")) for r, t in TURNS]
  assert conversations.pairs(plain, image=True) == conversations.pairs(TURNS, image=True)
  assert conversations.pairs(TURNS, image=False)[0][0] == "question: what color is the star? answer:"
  # Where the user's text places it, it stays; a system turn leads the first prompt.
  placed = [("system", "be brief"), ("user", "what is in <image> this?"), ("assistant", "a star")]
  assert conversations.pairs(placed, image=True) == [("be brief question: what is in <image> this? answer:",
                                                      " a star<eoc>")]
  ids, targets = sequences.chunk_tokens(TOK, {"conversation": TURNS}, with_image=True)
  assert TOK.decode(ids[targets][None]) == ["red <eoc> two <eoc>"]
  assert ids[0] == TOK.image_id and ids.tolist().count(TOK.eoc_id) == 2


@pytest.fixture(scope="module")
def chat_tokenizer(tmp_path_factory):
  """A word-level tokenizer.json with ChatML's markers, and its folder's tokenizer_config.json template."""
  from tokenizers import Tokenizer, models, pre_tokenizers
  folder = tmp_path_factory.mktemp("chat_tok")
  words = sorted(set(shapes.VOCAB) | {"system", "user", "assistant", "You", "helpful", "be", "brief"})
  specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
  vocab = {w: i for i, w in enumerate(specials + words + ["[UNK]"])}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
  tok.add_special_tokens(specials)
  tok.save(str(folder / "tokenizer.json"))
  (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML, "eos_token": "<|im_end|>"}))
  return folder


def test_chat_template_layout_is_transformers_text_with_replies_as_targets(chat_tokenizer):
  tok = tokenizers.get_tokenizer(f"hf:{chat_tokenizer}/tokenizer.json")
  assert tok.chat_template == CHATML
  pieces = conversations.pairs(TURNS, image=True, template=tok.chat_template)
  assert [t for _, t in pieces] == ["red<|im_end|>\n", "two<|im_end|>\n"]
  assert pieces[0][0] == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                          "<image> what color is the star?<|im_end|>\n<|im_start|>assistant\n")
  transformers = pytest.importorskip("transformers")
  reference = transformers.PreTrainedTokenizerFast(tokenizer_file=str(chat_tokenizer / "tokenizer.json"),
                                                   chat_template=CHATML)
  messages = [{"role": r, "content": t} for r, t in conversations.with_image(TURNS, True)]
  assert "".join(p + t for p, t in pieces) == reference.apply_chat_template(messages, tokenize=False)
  ids, targets = sequences.chunk_tokens(tok, {"conversation": TURNS}, with_image=True)
  im_end = tok.content_ids("<|im_end|>")
  assert len(im_end) == 1 and ids.tolist().count(tok.image_id) == 1
  assert tok.decode(ids[targets][None]) == tok.decode(np.array([tok.content_ids("red<|im_end|>\ntwo<|im_end|>\n")]))
  assert ids[targets].tolist().count(im_end[0]) == 2  # each reply's end-of-turn marker is trained


def test_chat_templates_are_read_from_the_folder_and_checked(tmp_path):
  assert conversations.read_chat_template(str(tmp_path)) is None
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": [
      {"name": "tool_use", "template": "x"}, {"name": "default", "template": CHATML}]}))
  assert conversations.read_chat_template(str(tmp_path)) == CHATML
  (tmp_path / "chat_template.jinja").write_text("{{ messages }}")
  assert conversations.read_chat_template(str(tmp_path)) == "{{ messages }}"  # the newer file wins
  os.remove(tmp_path / "chat_template.jinja")
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": 3}))
  with pytest.raises(ValueError, match=r"chat_template is int; valid: a Jinja template string"):
    conversations.read_chat_template(str(tmp_path))
  # A template whose text up to a reply is not a prefix of the text with it cannot mark the reply.
  reversed_template = "{% for m in messages|reverse %}{{ m['content'] }};{% endfor %}"
  with pytest.raises(ValueError, match=r"not a prefix of the text with it"):
    conversations.pairs(TURNS, image=True, template=reversed_template)


def test_shapes_conversations_describe_then_answer_about_one_scene():
  world = shapes.ShapesWorld(seed=0, image_size=24)
  for i in range(40):
    ex = world.conversation_example(i)
    turns, objects = ex["conversation"], ex["objects"]
    again = world.conversation_example(i)  # a function of (seed, index)
    assert again["conversation"] == turns and np.array_equal(again["image"], ex["image"])
    assert conversations.parse(turns) == turns and 4 <= len(turns) <= 6
    assert turns[0] == ("user", turns[0][1]) and turns[0][1] in shapes.DESCRIBE_REQUESTS
    assert all(o["shape"] in turns[1][1] and o["color"] in turns[1][1] for o in objects)
    for (_, question), (_, answer) in zip(turns[2::2], turns[3::2]):
      if question.startswith("how many"):
        assert answer == shapes.NUMBERS[len(objects) - 1]
      elif question.startswith("is there"):
        assert answer == ("yes" if any(o["shape"] in question for o in objects) else "no")
      else:
        assert answer in [o["color"] for o in objects if o["shape"] in question]
  source = shapes.ShapesSource(world, vqa_fraction=0.25, conversation_fraction=0.5, render=False)
  kinds = [("conversation" in ex, "question" in ex) for ex in (source[i] for i in range(400))]
  assert 0.4 < np.mean([c for c, _ in kinds]) < 0.6 and 0.15 < np.mean([q for _, q in kinds]) < 0.35
  with pytest.raises(ValueError, match=r"vqa_fraction=0.6 \+ conversation_fraction=0.5 exceeds 1"):
    shapes.ShapesSource(world, vqa_fraction=0.6, conversation_fraction=0.5)


def test_shapes_vlm_batches_train_the_assistant_turns_only():
  cfg = dict(name="shapes", format="vlm", image_size=24, max_len=56, vqa_fraction=0.0, conversation_fraction=1.0,
             num_threads=1, prefetch=1)
  batch = next(iter(pipeline.make_train_dataset(cfg, TOK, global_batch_size=4, seed=0)))
  for ids, mask in zip(batch["text"], batch["loss_mask"]):
    text = TOK.decode(ids[None])[0]
    assert text.startswith("<image> question") and text.count("<eoc>") >= 2
    answers = TOK.decode(np.where(mask, ids, TOK.pad_id)[None])[0]
    assert "question" not in answers and answers.count("<eoc>") == text.count("<eoc>")


def _llava_records(n):
  world = shapes.ShapesWorld(seed=3, image_size=24)
  out = []
  for i in range(n):
    ex = world.conversation_example(i)
    turns = [{"from": "human" if r == "user" else "gpt", "value": t} for r, t in ex["conversation"]]
    turns[0]["value"] = "<image>\n" + turns[0]["value"]
    out.append({"id": str(i), "image": ex["image"], "conversations": turns})
  return out


def _write_llava_json(directory, rows):
  os.makedirs(directory / "images", exist_ok=True)
  listed = []
  for i, row in enumerate(rows):
    if isinstance(row.get("image"), np.ndarray):
      (directory / "images" / f"{i}.png").write_bytes(encode(row["image"], "PNG"))
      row = dict(row, image=f"images/{i}.png")
    listed.append(row)
  (directory / "llava_instruct.json").write_text(json.dumps(listed))  # one JSON array, as LLaVA ships them
  return str(directory / "llava_instruct.json")


@pytest.mark.parametrize("source", ["folder", "array_record"])
def test_llava_json_records_become_conversation_chunks_bad_ones_counted(tmp_path, source):
  good = _llava_records(5)
  bad = [dict(good[0], conversations=good[0]["conversations"][:1]),  # no reply
         dict(good[1], conversations="not a conversation")]
  rows = good[:2] + bad + good[2:]
  if source == "folder":
    path = _write_llava_json(tmp_path, rows)
  else:
    path = str(tmp_path / "ar")
    with records.RecordWriter(path, records_per_file=4) as writer:
      for i, row in enumerate(rows):
        writer.write_packed(records.pack(dict(row, image=encode(row["image"], "PNG"), key=str(i))))
  cfg = dict(name=source, path=path, format="vlm", image_size=24, max_len=56, num_threads=1, prefetch=1)
  got = list(pipeline.make_eval_dataset(cfg, TOK, global_batch_size=5))
  assert len(got) == 1 and skips.counts_dict(got[0][pipeline.SKIPPED_KEY]) == {"bad_conversation": 2}
  settings = formats.CollateSettings(TOK, 56)
  want = formats.get_format("vlm").collate(settings)(
      [[{"image": r["image"], "conversation": conversations.parse(r["conversations"])}] for r in good])
  np.testing.assert_array_equal(got[0]["text"], want["text"])
  np.testing.assert_array_equal(got[0]["loss_mask"], want["loss_mask"])
  np.testing.assert_array_equal(got[0]["image"], want["image"])


def test_llava_instruction_tunes_on_shapes_conversations(tmp_path):
  from conftest import tiny_config
  from vljax.train.trainer import train_and_evaluate
  cfg = tiny_config(evals={}, total_steps=2, batch_size=8)
  cfg.model = dict(name="llava", image=dict(variant="mu/8", posemb="sincos2d"), text=dict(variant="mu", max_len=96))
  cfg.objectives = {"captioning": 1.0}
  cfg.data.update(format="vlm", chunks=1, image_size=24, max_len=56, vqa_fraction=0.0, conversation_fraction=1.0)
  cfg.checkpoint = dict(every=2, keep=1, async_save=False)
  train_and_evaluate(cfg, str(tmp_path / "w"))
  with open(tmp_path / "w" / "metrics.jsonl") as f:
    last = [json.loads(line) for line in f if '"train/loss"' in line][-1]
  assert last["step"] == 2 and np.isfinite(last["train/loss"]) and last["train/loss"] > 0
