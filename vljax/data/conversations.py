"""Multi-turn image conversations (visual instruction data, as LLaVA's stage 2 trains on) -> the
(prompt, target) pieces of one chunk, so the loss trains the assistant's turns alone.

A record's conversation (data.conversation_key, "conversations") is a list of turns in LLaVA's form
`{"from": "human" | "gpt", "value": TEXT}` or the chat form `{"role": "user" | "assistant", "content":
TEXT}`; an optional first "system" turn; then user and assistant turns alternating, ending with the
assistant. The record's image is where the user text says "<image>" (at most once), else in front of
the first user turn. `parse` returns [(role, text), ...] or None when a record breaks these rules
(skipped and counted as bad_conversation).

Laid out by the language model's own chat template when its tokenizer folder has one
(tokenizer_config.json "chat_template", or chat_template.jinja: the Jinja template transformers'
apply_chat_template renders), else in vljax's chunk words (prompts.py):

  <image> question: what is in the image? answer: a red circle<eoc> question: ... answer: ...<eoc>

With a template, each assistant turn's target is what the template adds for it (its text and
end-of-turn marker), found by rendering the conversation up to each turn; a template whose renders
are not prefixes of each other cannot be split so and is an error naming it.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence

from vljax.data.tokenizers import SPECIAL_TOKENS

IMAGE, EOC = SPECIAL_TOKENS
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}

Turn = tuple[str, str]  # (role: "system" | "user" | "assistant", text)


def parse(value) -> list[Turn] | None:
  """A record's conversation field -> its turns, or None when it is not a valid conversation."""
  if isinstance(value, (bytes, str)):  # JSON text (a CSV column, an ArrayRecord string field)
    try:
      value = json.loads(value)
    except ValueError:
      return None
  if not isinstance(value, (list, tuple)):
    return None
  turns = []
  for turn in value:
    if isinstance(turn, (list, tuple)) and len(turn) == 2:  # (role, text), as the shapes world writes them
      role, text = turn
    elif isinstance(turn, dict):
      role, text = turn.get("from", turn.get("role")), turn.get("value", turn.get("content"))
    else:
      return None
    if role not in ROLES or not isinstance(text, str) or not text.strip() or EOC in text:
      return None
    turns.append((ROLES[role], text.strip()))
  body = turns[1:] if turns and turns[0][0] == "system" else turns
  roles = [r for r, _ in body]
  if not body or roles != ["user", "assistant"] * (len(body) // 2) or len(body) % 2:
    return None
  if sum(t.count(IMAGE) for _, t in body if _ == "user") > 1 or any(IMAGE in t for r, t in turns if r != "user"):
    return None
  return turns


def with_image(turns: Sequence[Turn], image: bool) -> list[Turn]:
  """The turns with exactly one <image> in the user text (in front of the first user turn unless the
  text places it), or none (image=False: the language model alone reads the text)."""
  out = [(r, " ".join(t.replace(IMAGE, " ").split()) if r == "user" else t) for r, t in turns]
  if image:
    placed = next((i for i, (r, t) in enumerate(turns) if IMAGE in t), None)
    first = placed if placed is not None else next(i for i, (r, _) in enumerate(turns) if r == "user")
    text = turns[first][1] if placed is not None else f"{IMAGE} {turns[first][1]}"
    out[first] = ("user", " ".join(text.replace(IMAGE, f" {IMAGE} ").split()))
  return out


def pairs(turns: Sequence[Turn], image: bool, template: str | None = None) -> list[tuple[str, str]]:
  """(prompt, target) per assistant turn: the text before it (since the previous target), and it."""
  turns = with_image(turns, image)
  if template:
    return _template_pairs(template, turns)
  out, before = [], ""
  for role, text in turns:
    if role == "system":
      before = f"{text} "
    elif role == "user":
      # An image in front of the text goes before "question:", as in the chunks of captions and questions.
      lead = f"{IMAGE} " if text.startswith(f"{IMAGE} ") else ""
      out.append([f"{' ' if out else ''}{before}{lead}question: {text[len(lead):]} answer:", ""])
      before = ""
    else:
      out[-1][1] = f" {text}{EOC}"
  return [tuple(p) for p in out]


@functools.lru_cache(maxsize=8)
def _compiled(template: str):
  from jinja2.exceptions import TemplateError
  from jinja2.sandbox import ImmutableSandboxedEnvironment

  def raise_exception(message):
    raise TemplateError(message)

  # As transformers renders chat templates.
  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
  env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, indent=indent, ensure_ascii=False)
  env.globals["raise_exception"] = raise_exception
  return env.from_string(template)


def render(template: str, turns: Sequence[Turn], add_generation_prompt: bool) -> str:
  """The template's text of the turns. BOS is vljax's to add (every row starts with it), so the
  template's bos_token renders empty."""
  messages = [{"role": r, "content": t} for r, t in turns]
  return _compiled(template).render(messages=messages, add_generation_prompt=add_generation_prompt, bos_token="",
                                    eos_token="")


def _template_pairs(template: str, turns: Sequence[Turn]) -> list[tuple[str, str]]:
  out, done = [], ""
  for k, (role, _) in enumerate(turns):
    if role != "assistant":
      continue
    prompt, full = render(template, turns[:k], True), render(template, turns[:k + 1], False)
    if not (prompt.startswith(done) and full.startswith(prompt)):
      raise ValueError("the tokenizer's chat template renders a conversation's turns so that the text up to a "
                       "reply is not a prefix of the text with it; its targets cannot be marked. Valid: a "
                       "template whose renders extend each other (transformers' apply_chat_template with "
                       f"add_generation_prompt); turns {[r for r, _ in turns[:k + 1]]}: {prompt!r} vs {full!r}")
    out.append((prompt[len(done):], full[len(prompt):]))
    done = full
  return out


def read_chat_template(folder: str) -> str | None:
  """The chat template of a Hugging Face tokenizer folder, or None when it has none."""
  path = os.path.join(folder, "chat_template.jinja")
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      return f.read()
  path = os.path.join(folder, "tokenizer_config.json")
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    template = json.load(f).get("chat_template")
  if isinstance(template, list):  # named templates: the default one
    template = next((t.get("template") for t in template if t.get("name") == "default"), None)
  if template is not None and not isinstance(template, str):
    raise ValueError(f"{path!r}: chat_template is {type(template).__name__}; valid: a Jinja template string, "
                     "or a list of {name, template} with a 'default'")
  return template or None
