"""Writes tests/data/caption_reference.json: the official pycocoevalcap 1.2 numbers that
tests/test_caption_metrics.py pins vljax.evals.caption_metrics (vljax/evals/coco_metrics.py) to.
Documentation of how the fixture was made; not part of the test suite (pycocoevalcap needs Java and is a 104 MB wheel).

    python3.11 -m venv /tmp/cocoeval/venv
    /tmp/cocoeval/venv/bin/pip install pycocoevalcap==1.2 numpy      # java (openjdk 17) on PATH
    /tmp/cocoeval/venv/bin/python tests/data/make_caption_reference.py

The shapes captions come from the project's own venv (--project-python), since the reference venv
has no vljax dependencies; everything the test needs (inputs and official outputs) is stored.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2]
COMMAND = "/tmp/cocoeval/venv/bin/python tests/data/make_caption_reference.py"
NEUTRAL = "x"  # a following caption that changes no token (see official_tokens)

# Caption-like strings covering what the PTB tokenizer does with real captions.
TRICKY = [
    "A man's dog doesn't like its toy.", "It's a cat, isn't it?", "Two dogs' bowls on the kitchen floor.",
    "They're next to a well-known state-of-the-art building.", 'A 3.5 inch screen showing 1,000 people.',
    'A clock that reads 10:30 on a 24-hour display.', 'A sign that says "STOP" in red letters.',
    "A sign reading 'no parking' on the street.", 'A man (wearing a hat) walks his dog.',
    'A bowl of fruit [apples and oranges] on a {wooden} table.', 'A dog.', 'A dog...', 'A dog . ',
    'a   man    riding   a   horse', 'A MAN RIDING A HORSE ON THE BEACH.', 'Salt & pepper shakers on a table.',
    'A black/white photo of a cat and/or dog.', 'A woman in a T-shirt and jeans.', "An x-ray of a 2-year-old's hand.",
    'There are 2 1/2 pizzas left.', 'A $5 bill and a 20% off coupon.',
    'A man - in a suit - stands by a car -- waiting.', 'A cat; a dog: a bird!', 'Is this a U.S. Navy ship?',
    'A train at 3 p.m. near the station.', 'A street sign for Main St. and 5th Ave.',
    "Dr. Smith's office is on the left.", "A sign for McDonald's and Wendy's.", "People watching TV's in a store.",
    'A pizza with ham, cheese, etc. on a plate.', "A man can't stop laughing; he won't stop.",
    "I'm sure you'll love it, we've got it, they'd say.", "He's gonna catch the frisbee, I cannot wait.",
    "A 1990s car with a '50s style.", "It is 5 o'clock and rock 'n' roll is playing.",
    '\u201cSmart quotes\u201d and \u2018single\u2019 ones \u2014 and a dash.',
    'It\u2019s a dog\u2019s life, don\u2019t worry.', 'A caf\xe9 with a na\xefve painting.',
    'A sign that says: OPEN 24/7', 'An  elephant\tstanding in the grass.', 'Leading and trailing spaces   ',
    '   A cat on a mat.', 'A #1 fan at the game.', 'A bird on a branch!!!', 'What is the man doing?!',
    "A cat's toy, the cats' toys, James' toy.", 'A man wearing a No. 5 jersey.', "The word 'HELLO' written in sand.",
    'A 6\' tall man with a 12" sub.', 'A close-up of a hot-dog.', 'A double-decker bus in London, U.K. at night',
    'Two cats.The cats are sleeping.', 'A group of people at an AT&T store.', 'A dog at 10:30am and 5 PM.',
    'A boy with a 3D model and a 2nd place ribbon.', 'An e-mail on a laptop screen at www.example.com.',
    'A mid-air jump by a snow-boarder.', 'Pizza, pasta, and salad... yum!', "A pile of 100's of bananas.",
    'A large, white, fluffy dog.', 'Bananas at $0.99/lb.', 'A man in a red shirt.A dog in the back.',
    'A street sign: Broadway & 42nd St.', 'A cat \U0001f600 on a bed.', '',
    'A plate with 1/2 of a sandwich and \xbd an apple.', 'A 12-inch, 3.5-pound fish :)',
    'Two men -- one old, one young -- play chess.', "A man's & a woman's bikes.",
    'Mr. and Mrs. Smith at the Jan. 5 party.', "The dog's ready; it's 6:00 a.m. The sun is up.",
    'A kid with an iPhone and an iPad (new).',
]
# Where Java's one-file view of all captions changes a token: (caption, the caption after it).
CONTEXT_GAP = [("A sign with the letter B.", "A man walks by."), ("A sign that says no.", "2 men walk by.")]

SHAPES_SNIPPET = """
import json
from vljax.data.shapes import ShapesWorld
w = ShapesWorld(seed=0)
print(json.dumps([w.example(i, split="eval")["caption"] for i in range(180)]))
"""


def shapes_items(project_python: str) -> list[dict]:
  """60 items from the shapes world: candidates are other scenes' captions or light edits of the
  scene's own caption (case, punctuation, a dropped or swapped word); 1-3 references each."""
  caps = json.loads(subprocess.run([project_python, "-c", SHAPES_SNIPPET], cwd=ROOT, check=True,
                                   capture_output=True, text=True).stdout)
  items = []
  for i in range(60):
    own, words = caps[i], caps[i].split()
    kind = i % 5
    if kind == 0:
      cand = caps[i + 1]
    elif kind == 1:
      cand = own[0].upper() + own[1:] + "."
    elif kind == 2:
      cand = " ".join(words[:2] + words[3:])
    elif kind == 3:
      cand = " ".join(words[:-2] + words[-1:-3:-1])
    else:
      cand = own.replace("a ", "the ", 1).upper()
    refs = [own, caps[60 + i], caps[120 + i]][: 1 + i % 3]
    items.append({"id": i, "candidate": cand, "references": refs})
  return items


def official_scores(items: list[dict]) -> dict:
  """COCOEvalCap.evaluate's steps: tokenize references and candidates, then Bleu(4), Rouge, Cider."""
  gts = {it["id"]: [{"caption": r} for r in it["references"]] for it in items}
  res = {it["id"]: [{"caption": it["candidate"]}] for it in items}
  tokenizer = PTBTokenizer()
  gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
  bleu, bleu_per_image = Bleu(4).compute_score(gts, res, verbose=0)
  rouge, rouge_per_image = Rouge().compute_score(gts, res)
  cider, cider_per_image = Cider().compute_score(gts, res)
  out_items = []
  for k, it in enumerate(items):
    out_items.append({**it, "candidate_tokens": res[it["id"]][0], "reference_tokens": gts[it["id"]],
                      "rouge_l": float(rouge_per_image[k]), "cider": float(cider_per_image[k])})
  metrics = {**{f"bleu{n + 1}": float(b) for n, b in enumerate(bleu)}, "rouge_l": float(rouge), "cider": float(cider)}
  return {"items": out_items, "metrics": metrics}


def official_tokens(pairs: list[tuple[str, str]]) -> list[str]:
  """Official tokenisation of each first string, followed in the tokenizer's input by the second."""
  captions = {i: [{"caption": a}, {"caption": b}] for i, (a, b) in enumerate(pairs)}
  out = PTBTokenizer().tokenize(captions)
  return [out[i][0] for i in range(len(pairs))]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--project-python", default=str(ROOT / ".venv/bin/python"))
  parser.add_argument("--coco", default="/work/shared/data/coco_caption_sample.json", help="ten MS-COCO images")
  parser.add_argument("--out", default=str(ROOT / "tests/data/caption_reference.json"))
  args = parser.parse_args()
  coco = json.loads(pathlib.Path(args.coco).read_text())
  fixture = {
      "generated_by": f"pycocoevalcap 1.2 (PTBTokenizer: Stanford CoreNLP 3.4.1 on OpenJDK 17; Bleu(4), Rouge, "
                      f"Cider) via `{COMMAND}`",
      "coco_sample": {"source": coco["source"], **official_scores(coco["items"])},
      "shapes": {"source": "vljax ShapesWorld(seed=0) eval captions 0-179, edited as in shapes_items()",
                 **official_scores(shapes_items(args.project_python))},
      "tokenization": [{"text": t, "official": o}
                       for t, o in zip(TRICKY, official_tokens([(t, NEUTRAL) for t in TRICKY]))],
      "context_gap": [{"text": t, "next": n, "official_before_next": a, "official_before_neutral": b}
                      for (t, n), a, b in zip(CONTEXT_GAP, official_tokens(CONTEXT_GAP),
                                              official_tokens([(t, NEUTRAL) for t, _ in CONTEXT_GAP]))],
  }
  pathlib.Path(args.out).write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
