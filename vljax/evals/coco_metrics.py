"""COCO caption metrics (BLEU-1..4, ROUGE-L, CIDEr-D) in pure Python, equal to pycocoevalcap 1.2.

pycocoevalcap tokenises captions with Stanford CoreNLP 3.4.1's PTBTokenizer (Java, `-preserveLines
-lowerCase`) and drops punctuation tokens: `ptb_tokenize` re-implements that lexer's rules as a
longest-match scanner like the JFlex original, and the scorers repeat pycocoevalcap's arithmetic
(tests/data/caption_reference.json pins both). Known gap: Java reads all captions as one file, so a
caption ending "letter B." before one starting "A ..." (or "says no." before "2 ...") tokenises
differently there; here each caption stands alone, as if followed by a neutral one.
"""

from __future__ import annotations

import collections
import math
import re

# ---- PTB tokenizer: the CoreNLP 3.4.1 PTBLexer rules that captions exercise ----

_CS = lambda p: f"(?-i:{p})"  # the lexer is %caseless, except inside [character classes]


def _alt(words: str, first_upper: bool = False) -> str:
  """Regex alternation of JFlex words: letters match either case, [classes] and ^-marked first letters do not."""
  out = []
  for w in words.split():
    w = re.sub(r"\[[^\]]*\]", lambda m: _CS(m[0]), w)
    out.append(_CS(w[1].upper()) + w[2:] if w.startswith("^") else _CS(w[0].upper()) + w[1:] if first_upper else w)
  return "(?:" + "|".join(sorted(out, key=len, reverse=True)) + ")"  # Python takes the first alternative


# Alphanumeric to Python only; JFlex 1.4 reads UTF-16 units, so beyond U+FFFF nothing is a letter or digit.
_NOT_LETTERS = r"\u00b2\u00b3\u00b9\u00bc-\u00be\u2070-\u209f\u2150-\u218f\U00010000-\U0010ffff"
_DIG = r"[^\D\U00010000-\U0010ffff]"  # a digit (JFlex [:digit:])
_LET = rf"[^\W\d_{_NOT_LETTERS}]"  # a letter (JFlex [:letter:])
_L = rf"(?:{_LET}|[\u00ad\u0300-\u036f])"  # a letter in a word: also combining accents, soft hyphen
_AN, _ALNUM = rf"(?:{_L}|{_DIG})", rf"[^\W_{_NOT_LETTERS}]"  # letter or digit, in words / in other tokens
_APOS, _APOSX = r"(?:['\u0092\u2019]|&apos;)", r"(?:['`\u0092\u2019\u0091\u2018\u201b]|&apos;)"
_SP, _SPNL = r"[ \t\u00a0\u2000-\u200a\u3000]", r"[ \t\u00a0\u2000-\u200a\u3000\n]"
_NUM = rf"{_DIG}*(?:[.:,\u00ad\u066b\u066c]{_DIG}+)+|{_DIG}+"
_WORD = rf"{_L}{_AN}*(?:[.!?]{_L}{_AN}*)*"
_ACRO, _ACRO2 = r"[a-z](?:\.[a-z])*", r"[a-z](?:\.[a-z])+"
_REDAUX, _SREDAUX = rf"{_APOS}(?:[msd]|re|ve|ll)", rf"n{_APOSX}t"  # 's 'm 'd 're 've 'll; n't
_THING = rf"(?:[dol]{_APOSX}{_ALNUM})?{_ALNUM}+"  # o'clock, d'angelo
_THINGS = rf"{_THING}(?:[-_\u058a\u2010\u2011]{_THING})*"  # hyphenated words and numbers: 2-year-old
_HTHING = rf"[a-z0-9][a-z0-9.,\u00ad]*(?:-(?:{_ACRO2}\.|[a-z0-9\u00ad]+))+"  # 3.5-inch, u.s.-made
_INSENTP, _NAME = r"[,;:\u3001]", r"[a-z][a-z0-9_:.-]*"
_SGML = rf"<(?:[!?][a-z-][^>\n]*|{_NAME}(?: +{_NAME}(?: *= *(?:'[^'\n]*'|\"[^\"\n]*\"))?)* */?|/{_NAME}) *>"
_THINGA = _CS("[A-Z]+(?:(?:[+&]|&amp;)[A-Z]+)+")
_QUOTES = r"''|[`\u2018-\u201f\u0091-\u0094\u2039\u203a\u00ab\u00bb]{1,2}|" + _APOS
# After an acronym, these words (capitalised) make its period end a sentence too.
_STARTERS = _alt(r"about according additionally after an a as at but earlier he her here however if in it last "
                 r"many more mr\. ms\. now once one other our she since so some such that the their then there "
                 r"these they this we when while what yet you", first_upper=True)
# Abbreviations keeping their period: ABBREV1 ones end a sentence before upper case, ABBREV3 before digits.
_ABBREV1 = _alt(r"jan feb mar apr jun jul aug sept? oct nov dec mon tues? wed thu thurs fri ala ariz ^az ^ark calif "
                r"colo conn ct dak ^del fla ga ^ill ind kans? ky ^la ^mass md mich minn ^miss mo mont neb nev okla "
                r"^ore ^pa penn ^tex tenn va vt ^wash wisc? wyo inc cos? corp pp?t[ye]s? ltd plc rt bancorp bhd assn "
                r"univ intl sys tel est ext sq jr sr bros esq blvd rd etc al seq bldg ed\.d ph\.d") + r"\."
_ABBREV2 = (rf"(?:{_ACRO2}|" + _alt(r"mrs mr ms drs? profs? sens? reps? attys? lt col gen messrs govs? adm rev maj sgt "
            r"cpl pvt capt ste? ave pres lieut hon brig co?mdr pfc spc supts? det mt ft adj adv asst assoc ens insp "
            r"mlle mme msgr sfc dept ph vs alex wm jos cie a\.k\.a cf treas invt elec natl m[ft]g ^miss") + "|[a-z])")
_ABBREV3 = _alt("ca figs? prop nos? art pp op") + r"\."
_FILENAME = rf"{_ALNUM}+(?:\.{_ALNUM}+)*\." + _alt("bat bmp bz2 c class cgi cpp dll docx? exe gif gz h html? jar java "
                                               "jpe?g mov mp3 pdf php pl png ppt ps py sql tar txt wav x xml zip")
_EMAIL = (r"(?:&lt;|<)?[a-z0-9][^ \t\n\f\r\"<>|(){}\u00a0]*@(?:[^ \t\n\f\r\"<>|(){}.\u00a0]+\.)*"
          r"[^ \t\n\f\r\"<>|(){}.\u00a0]+(?:&gt;|>)?")
_URL = (r"(?:https?|ftp)://[^ \t\n\f\r\"<>|(){}]+[^ \t\n\f\r\"<>|.!?(){},-]|(?:www\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+"
        r"[a-z]{2,4}|(?:" + _CS(r"[^ \t\n\f\r\"`'<>|.!?(){}\x2c-\x5f$]") + r"+\.)+(?:com|net|org|edu))"
        r"(?:/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?")
_D = "[0-9]"  # ASCII digits only, unlike \d
_PHONE = (rf"(?:\({_D}{{2,3}}\)[ \u00a0]?|(?:\+\+?)?(?:{_D}{{2,4}}[- \u00a0])?{_D}{{2,4}}[- \u00a0])"  # 555 123 4567
          rf"{_D}{{3,4}}[- \u00a0]?{_D}{{3,5}}|(?:(?:\+\+?)?{_D}{{2,4}}\.)?{_D}{{2,4}}\.{_D}{{3,4}}\.{_D}{{3,5}}")
_MISC = ("[+%&~^|\\\\\u00a6-\u00a9\u00ac\u00ae\u00af\u00b0-\u00ba\u00d7\u00f7\u2016\u2017\u2020-\u2023\u2030-\u2038"
         "\u203b\u203e-\u2042\u2044\u207a-\u207f\u208a-\u208e\u2100-\u214f\u2190-\u21ff\u2200-\u2bff]")
_MAP = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-", "\u00bc": "1/4",
        "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3", "\u00a2": "cents", "\u00a3": "#",
        "\u0080": "$", "\u00a4": "$", "\u20a0": "$", "\u20ac": "$", "&amp;": "&", "&lt;": "<", "&gt;": ">"}
_QUOTE_MAP = {**dict.fromkeys("'\u0092\u2019\u203a", "'"), **dict.fromkeys("`\u0091\u2018\u201b\u2039", "`"),
              **dict.fromkeys("\u0093\u201c\u00ab", "``"), **dict.fromkeys('"\u0094\u201d\u00bb', "''")}

_keep, _amp = (lambda t: [t]), (lambda t: [t.replace("&amp;", "&")])
_nbsp = lambda t: [t.replace(" ", "\u00a0")]  # normalizeSpace: a token's inner spaces become U+00A0
_map = lambda t: [_MAP.get(t.lower(), t)]
_parens = lambda t: [re.sub(r"[()]", lambda m: _MAP[m[0]], t.replace(" ", "\u00a0"))]  # :-) and (555) 123-4567
_split = lambda n: lambda t: [t[:-n], t[-n:]]  # "cannot" -> "can" "not", "gonna" -> "gon" "na"
_then_period = lambda t: [t, "."]  # the lexer hands out the abbreviation's period a second time
# Quote marks become ` ' `` '' as CoreNLP's latexQuotes maps them. Whether a straight quote reads as opening
# or closing only changes tokens that pycocoevalcap drops anyway, so that guess is not modelled.
_quotes = lambda t: ["".join(_QUOTE_MAP.get(c, c) for c in re.sub("&apos;", "'", re.sub("&quot;", '"', t)))]

# (pattern, trailing context or None, action) in the lexer's rule order. As in JFlex, the longest
# match wins, trailing context included; among equally long matches the earlier rule wins.
_RULES = [
    (r"cannot|'twas", None, _split(3)), (r"'tis|gonna|gotta|lemme|gimme|wanna", None, _split(2)),
    (_SGML, None, _nbsp), (r"&(?:md|mdash|ndash);|[\u0096\u0097\u2013-\u2015]", None, lambda t: ["--"]),
    (r"&amp;", None, _map), (r"&(?:ht|tl|ur|lr|qc|ql|qr|odq|cdq|#[0-9]+);", None, _keep), (r"c\+\+|[cf]#", None, _keep),
    (_WORD, _REDAUX, _keep), (r"[a-z\u00ad]*[a-mo-z]\u00ad*", _SREDAUX, _keep), (_WORD, None, _keep),
    (rf"{_CS('[A-HJ-XZn]')}{_APOSX}{_LET}{{2,}}|{_LET}+[aeiouy]{_APOSX}{_CS('[aeiouA-Z]')}{_LET}*|{_APOS}n{_APOS}?|"
     rf"(?:dunkin|somethin|ol){_APOS}|{_APOS}(?:em|[2-9]0s|till?|cause)|cont'd\.?|nor'easter|c'mon|e'er|s'mores|"
     rf"ev'ry|li'l|nat'l|o{_APOSX}o|[ldj]{_APOS}", None, _keep),  # words with an apostrophe inside: 'n' '90s o'neil
    (rf"y{_APOS}", _LET, _keep), (_URL, None, _keep), (_EMAIL, None, _keep),
    (rf"@[a-z_][a-z_0-9]*|#{_L}+", None, _keep), (_REDAUX, r"[^a-z]", _quotes), (_SREDAUX, None, _quotes),
    (rf"{_DIG}{{1,2}}[-/]{_DIG}{{1,2}}[-/]{_DIG}{{2,4}}", None, _keep), (rf"[-+]?(?:{_NUM})", None, _keep),
    (r"[\u207a\u207b\u208a\u208b]?(?:[\u2070\u00b9\u00b2\u00b3\u2074-\u2079]+|[\u2080-\u2089]+)", None, _keep),
    (rf"(?:{_DIG}{{1,4}}[- \u00a0])?{_DIG}{{1,4}}(?:\\?/|\u2044){_DIG}{{1,4}}", None, _nbsp),  # 1/2, 2 1/2
    (rf"-(?:rrb|lrb|rcb|lcb|rsb|lsb)-|c\.d\.s|pro-|anti-|s&p-500|s&ls|cap{_APOS}n|c{_APOS}est", None, _keep),
    (r"[a-z0-9]+(?:-[a-z]+){0,2}(?:\\?/[a-z0-9]+(?:-[a-z]+){0,2}){1,2}", None, _keep),  # and/or, 3/4-inch
    (r"[\u00bc-\u00be\u2153-\u215e]", None, _map), (_CS("[A-Z]*") + r"\$|#", None, _keep),
    (r"[\u00a2-\u00a5\u0080\u20a0\u20ac\u060b\u0e3f\u20a4\uffe0\uffe1\uffe5\uffe6]", None, _map),
    (rf"{_ACRO}\.", rf"{_SPNL}+(?:{_STARTERS}|{_SGML}){_SPNL}", lambda t: [t[:-1], "."] if len(t) == 2 else [t, "."]),
    (_ABBREV3, rf"{_SPNL}?{_DIG}", _keep), (_ABBREV1, rf"{_SPNL}(?:{_SPNL}|{_CS('[A-Z]')}|{_SGML})", _then_period),
    (_ABBREV1, r"[\s\S]{2}", _keep), (_ABBREV1, None, _then_period), (rf"{_ABBREV2}\.", None, _keep),
    (_ABBREV2, _SP, _keep), (_ACRO, _SPNL, _keep), (rf"{_APOS}[0-9][0-9]", _SPNL, _keep),
    (_FILENAME, r"[ \t\n\u00a0.?!,]", _keep), (rf"{_WORD}\.", _INSENTP, _keep), (_PHONE, None, _parens),
    (r'"|&quot;', None, _quotes), (r"<|&lt;|>|&gt;", None, _map),
    (r"[<>]?[:;=]" + _CS(r"[-o*']?[()DPdpO\\{@|\[\]]"), r"[^a-z0-9]", _parens),  # smileys
    (r"[-^x=~<>']_[-^x=~<>']|\([-^x=~<>'][_.]?[-^x=~<>']\)|\([\^x=~<>']-[\^x=~<>'`]\)", None, _parens),
    (r"[()\[\]{}]", None, _map), (r"-+", None, lambda t: ["--"] if len(t) in (3, 4) else [t]),
    (r"\.{3,5}|(?:\.[ \u00a0]){2,4}\.|[\u0085\u2026]", None, lambda t: ["..."]),
    (r"@+|#+|_+|\*+|(?:\\\*){1,3}|[,;:\u3001]|[?!]+|[.\u00a1\u00bf]|=|/", None, _keep),
    (_HTHING, None, _keep), (rf"{_HTHING}\.", _INSENTP, _keep), (_THINGS, None, _keep),
    (rf"{_THINGS}\.", _INSENTP, _keep), (_THINGA, None, _amp), (rf"{_THINGA}\.", _INSENTP, _amp),  # AT&T
    (r"'|&apos;", rf"{_LET}[^ \t\n\u00a0]", _quotes), (_QUOTES, None, _quotes), (_REDAUX, None, _quotes),
    (r"<<|>>", None, _keep), (_MISC, None, _keep),
]
_COMPILED = [(re.compile(f"(?:{p})" + (f"(?={c})" if c else ""), re.I), c and re.compile(c, re.I), action)
             for p, c, action in _RULES]
_SKIP = re.compile(r"[ \t\n\u00a0\u2000-\u200b\u200e\u200f\u3000\ufeff\x00\x7f]+")
# Tokens pycocoevalcap drops after tokenising; it never drops "-lrb-" etc. since it compares upper case.
_PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
                "...", ";"}


def _longest_match(text: str, pos: int):
  """The rule JFlex would pick at `pos`: longest match, trailing context counted; first rule on ties."""
  best, best_len = None, 0
  for rx, context, action in _COMPILED:
    m = rx.match(text, pos)
    n = m and m.end() - pos + (context.match(text, m.end()).end() - m.end() if context else 0)
    if m and n > best_len:
      best, best_len = (m, action), n
  return best


def _ptb_tokens(text: str) -> list[str]:
  """Stanford PTBTokenizer 3.4.1 tokens of one line, lower-cased; characters it cannot tokenise vanish."""
  text = re.sub(r"[\r\n\u2028\u2029\u000b\u000c\u0085]", " ", text) + "\n"  # each caption is a line of its own
  pos, out = 0, []
  while pos < len(text):
    skip, best = _SKIP.match(text, pos), None
    if not skip:
      best = _longest_match(text, pos)
    if best:
      out += best[1](best[0].group())
    pos = skip.end() if skip else best[0].end() if best else pos + 1  # pos + 1: untokenisable, deleted
  return [t.lower() for t in out]


def ptb_tokenize(text: str) -> str:
  """What pycocoevalcap's PTBTokenizer makes of one caption: PTB tokens, lower case, punctuation dropped."""
  return " ".join(t for t in " ".join(_ptb_tokens(text)).rstrip().split(" ") if t not in _PUNCTUATION)


# ---- scorers: pycocoevalcap's Bleu(4), Rouge and Cider on the tokenised captions ----

def _ngrams(words: list[str], n: int = 4) -> collections.Counter:
  return collections.Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def _bleu(cands: list[str], refs: list[list[str]]) -> list[float]:
  """Corpus BLEU-1..4 as bleu_scorer.py: clipped counts summed over images, "closest" reference length."""
  small, tiny = 1e-9, 1e-15  # bleu_scorer's guards against division by zero, kept for identical numbers
  correct, guess, testlen, reflen = [0] * 4, [0] * 4, 0, 0
  for cand, rs in zip(cands, refs):
    words, maxref = cand.split(), collections.Counter()
    for r in rs:
      maxref |= _ngrams(r.split())
    for gram, count in _ngrams(words).items():
      correct[len(gram) - 1] += min(count, maxref[gram])
    guess = [g + max(0, len(words) - k) for k, g in enumerate(guess)]
    testlen += len(words)
    reflen += min((abs(len(r.split()) - len(words)), len(r.split())) for r in rs)[1]  # ties: the shorter
  scores, product = [], 1.0
  for k in range(4):
    product *= float(correct[k] + tiny) / (guess[k] + small)
    scores.append(product ** (1.0 / (k + 1)))
  ratio = (testlen + tiny) / (reflen + small)
  return [s * math.exp(1 - 1 / ratio) for s in scores] if ratio < 1 else scores


def _lcs(a: list[str], b: list[str]) -> int:
  row = [0] * (len(b) + 1)
  for x in a:
    prev_diag, row[0] = 0, 0
    for j, y in enumerate(b, 1):
      prev_diag, row[j] = row[j], prev_diag + 1 if x == y else max(row[j], row[j - 1])
  return row[-1]


def _rouge_l(cand: str, refs: list[str], beta: float = 1.2) -> float:
  """rouge.py's ROUGE-L of one image: best precision and best recall over the references (split on " ")."""
  c = cand.split(" ")  # " " and not split(): an empty caption is one empty token, as in rouge.py
  lcs = [(_lcs(r.split(" "), c), len(r.split(" "))) for r in refs]
  prec, rec = max(n / len(c) for n, _ in lcs), max(n / m for n, m in lcs)
  return (1 + beta**2) * prec * rec / (rec + beta**2 * prec) if prec and rec else 0.0


def _tfidf(counts: collections.Counter, df: collections.Counter, log_n: float):
  """cider_scorer.py's counts2vec: tf-idf per n-gram order, their norms, and the caption's "length", which
  is its number of bigrams (cider_scorer tests `n == 1` on a 0-based n), not of words."""
  vec = [{} for _ in range(4)]
  for gram, tf in counts.items():
    vec[len(gram) - 1][gram] = float(tf) * (log_n - math.log(max(1.0, df[gram])))
  norms = [math.sqrt(sum(x * x for x in v.values())) for v in vec]
  return vec, norms, sum(c for gram, c in counts.items() if len(gram) == 2)


def _cider_d(cands: list[str], refs: list[list[str]], sigma: float = 6.0) -> list[float]:
  """cider_scorer.py per image: clipped tf-idf cosine per n, Gaussian length penalty, mean over n and
  references, x10; document frequencies come from the references of the images scored together."""
  df = collections.Counter(g for rs in refs for g in set().union(*(_ngrams(r.split()) for r in rs)))
  log_n, scores = math.log(float(len(refs))), []
  for cand, rs in zip(cands, refs):
    vec, norm, length = _tfidf(_ngrams(cand.split()), df, log_n)
    total = [0.0] * 4
    for r in rs:
      rvec, rnorm, rlength = _tfidf(_ngrams(r.split()), df, log_n)
      for n in range(4):
        val = sum(min(x, rvec[n].get(g, 0.0)) * rvec[n].get(g, 0.0) for g, x in vec[n].items())
        val = val / (norm[n] * rnorm[n]) if norm[n] and rnorm[n] else val
        total[n] += val * math.e ** (-(float(length - rlength) ** 2) / (2 * sigma**2))
    scores.append(sum(total) / 4 / len(rs) * 10.0)
  return scores


def _check(candidates: dict, references: dict) -> None:
  """Bad input fails here with what is wrong (pycocoevalcap would assert or misalign)."""
  if not candidates:
    raise ValueError("caption_metrics: no candidates to score")
  missing, extra = [k for k in candidates if k not in references], [k for k in references if k not in candidates]
  if missing or extra:
    raise ValueError(f"caption_metrics: candidate ids without references: {missing[:5]}; "
                     f"reference ids without a candidate: {extra[:5]}")
  for k, c in candidates.items():
    if not isinstance(c, str):
      raise ValueError(f"caption_metrics: candidate {k!r} is {type(c).__name__} {c!r}, not a str")
    refs = references[k]
    if not isinstance(refs, (list, tuple)) or not refs or not all(isinstance(r, str) for r in refs):
      raise ValueError(f"caption_metrics: references[{k!r}] must be a non-empty list of str, got {refs!r}")


def caption_metrics(candidates: dict, references: dict) -> dict[str, float]:
  """candidates: {example_id: str}, references: {example_id: list[str]} -> {"bleu1","bleu2","bleu3","bleu4","rouge_l","cider"}

  The numbers pycocoevalcap 1.2 gives (PTBTokenizer, Bleu(4), Rouge, Cider); means use math.fsum so
  the result does not depend on dict order."""
  _check(candidates, references)
  cands = [ptb_tokenize(c) for c in candidates.values()]
  refs = [[ptb_tokenize(r) for r in references[k]] for k in candidates]
  rouge = math.fsum(_rouge_l(c, rs) for c, rs in zip(cands, refs)) / len(cands)
  return {**{f"bleu{k + 1}": b for k, b in enumerate(_bleu(cands, refs))}, "rouge_l": rouge,
          "cider": math.fsum(_cider_d(cands, refs)) / len(cands)}
