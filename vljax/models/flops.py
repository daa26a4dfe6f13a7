"""Analytic model FLOPs of a train step, part by part, for MFU.

Counts 2 FLOPs per multiply-accumulate of every matmul and conv, attention's QK^T and AV included
(the full square, even where a causal or media mask hides keys: it is computed); elementwise ops
(norms, activations, softmax, loss, optimizer) are left out, as MFU conventionally does. Remat
recomputation is not counted: MFU measures useful work, so remat lowers it as it should.

A model declares its forward pass as a list of Parts (its class's `flop_parts(cfg, inputs)`, next
to `from_config`): each owns param paths, its matmul FLOPs per example, and which parts' outputs
(or which data) it reads. The backward pass then costs, per part:
  weight gradients   1x its dense FLOPs, times the fraction of its params that train;
  input gradients    1x its dense FLOPs where a gradient must pass through it (a param in it or
                     upstream of it trains), less the matmuls that read an input no gradient
                     reaches with nothing trainable between (a ViT's stem reading pixels);
  attention          2x its QK^T / AV FLOPs where a gradient passes (dP, dV, dQ, dK: no weights).
So a trained part costs about 3x its forward; a frozen part above a trained one (Flamingo's LM,
between its trained cross-attention blocks) about 2x; a frozen part nothing trained feeds (LiT's
image tower) 1x. A part whose params are partly frozen gets weight gradients for its trained share
of params and input gradients throughout (exact for whole blocks, an upper bound otherwise).
Objectives that run further passes of the model on the step's params (BLIP's ITM on mined
negatives, MLM) declare them by method and runs per example (register_objective's `passes`); the
model's flop_parts(cfg, inputs, passes=...) appends each method's parts (further_pass), which read
the training pass's parts and so pass their gradients into them. The count of a config's train step
(batch, frozen set, objectives) is vljax/train/step_flops.py's.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

DATA = ("image", "text")  # what parts may read besides other parts: never gets a gradient


@dataclasses.dataclass(frozen=True)
class Part:
  """One piece of a model's forward pass; FLOPs per example."""
  name: str
  params: tuple[str, ...] = ()  # param path prefixes it owns ("img/encoder/block_0")
  dense: float = 0.0  # matmuls with its own weights
  attention: float = 0.0  # weightless matmuls: QK^T and AV
  # Every input (a part declared before it, or DATA) -> the FLOPs of `dense` that read it directly,
  # with nothing trainable between: 0 where it passes a LayerNorm of the part's own first, or joins a
  # concatenation or the residual stream (their input gradients are computed whole).
  reads: Mapping[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Inputs:
  """What one example feeds the model."""
  image_size: int
  images: int  # images per example ("vlm" data: data.chunks)
  text_len: int  # ids per example (data.max_len)

  @classmethod
  def from_data(cls, data: Any) -> "Inputs":
    images = int(data.get("chunks", 1)) if data.get("format", "caption") == "vlm" else 1
    return cls(image_size=int(data["image_size"]), images=images, text_len=int(data["max_len"]))


class UncountedPass(ValueError):
  """An objective runs a model method whose FLOPs the model does not declare."""


def model_parts(model_cfg: Any, inputs: Inputs, passes: Mapping[str, float] | None = None) -> list[Part] | None:
  """The parts the model named by model_cfg["name"] declares; None where its class declares none.
  passes: model method -> runs per example, the further passes objectives run (UncountedPass where
  the model counts no such method)."""
  from vljax import models  # lazy: the model files import this one

  cfg = models.registry.canonical_config(model_cfg)
  name = cfg.pop("name", None)
  if name not in models.MODELS:
    raise ValueError(f"Unknown model name {name!r}; valid: {sorted(models.MODELS)}")
  declare = getattr(models.MODELS[name], "flop_parts", None)
  if declare is None:
    return None
  if not passes:
    return list(declare(cfg, inputs))
  if "passes" not in inspect.signature(declare).parameters:
    raise UncountedPass(f"model {name!r} declares no FLOP count for the further pass(es) {sorted(passes)}")
  return list(declare(cfg, inputs, passes=dict(passes)))


def forward_flops(parts: Sequence[Part]) -> float:
  return float(sum(p.dense + p.attention for p in parts))


def train_flops(parts: Sequence[Part], param_sizes: Mapping[str, int], is_frozen: Callable[[str], bool]) -> float:
  """Forward + backward FLOPs per example of `parts` (in forward order) when the params for which
  is_frozen(path) holds get no gradient; param_sizes: path -> number of elements."""
  carries: dict[str, bool] = {}  # part -> its output carries a gradient (it or something upstream trains)
  total = 0.0
  for p in parts:
    unknown = sorted(set(p.reads) - set(carries) - set(DATA))
    if unknown:
      raise ValueError(f"FLOP part {p.name!r} reads {unknown}: not parts declared before it nor {list(DATA)}")
    trains = _trained_fraction(p, param_sizes, is_frozen)
    passes = trains > 0 or any(carries.get(r, False) for r in p.reads)
    carries[p.name] = passes
    inner = p.dense - sum(p.reads.values())  # matmuls reading the part's own activations
    input_grads = (inner if passes else 0.0) + sum(f for r, f in p.reads.items() if carries.get(r, False))
    total += p.dense + p.attention + trains * p.dense + input_grads + (2 * p.attention if passes else 0.0)
  return total


def _trained_fraction(part: Part, param_sizes: Mapping[str, int], is_frozen: Callable[[str], bool]) -> float:
  owned = {k: n for k, n in param_sizes.items() if any(k == q or k.startswith(q + "/") for q in part.params)}
  total = sum(owned.values())
  return sum(n for k, n in owned.items() if not is_frozen(k)) / total if total else 0.0


# ---- building blocks the model files compose --------------------------------------------

def linear(name: str, flops: float, reads: str) -> Part:
  """A dense layer (params under `name`) applied to part `reads`."""
  return Part(name, (name,), dense=float(flops), reads={reads: float(flops)})


def times(parts: Sequence[Part], k: float) -> list[Part]:
  """The same parts run k times per example (Flamingo's images)."""
  return [dataclasses.replace(p, dense=k * p.dense, attention=k * p.attention,
                              reads={r: k * f for r, f in p.reads.items()}) for p in parts]


def further_pass(method: str, parts: Sequence[Part], runs: float) -> list[Part]:
  """A method an objective runs `runs` times per example besides the training pass (BLIP's ITM on
  3 pairs an example): its parts renamed "<method>:<name>", since they may share weights (and so
  names) with the training pass's; reads of its own parts follow the renaming, reads of the
  training pass's parts and of data stay. Params stay: a shared weight's gradient is paid per pass."""
  own = {p.name for p in parts}
  rename = lambda name: f"{method}:{name}" if name in own else name
  return times([dataclasses.replace(p, name=rename(p.name), reads={rename(r): f for r, f in p.reads.items()})
                for p in parts], runs)


def block(name: str, length: int, width: int, mlp_dim: int, reads: str,
          memory: tuple[str, int, int] | None = None) -> Part:
  """A pre-LN transformer block over `length` tokens of part `reads`; memory=(part, tokens,
  width) adds cross-attention to that part's output (its keys and values read it directly)."""
  n, d = length, width
  # Q, K, V read LN(input), whose scale and bias are the block's: no direct read of `reads`.
  dense, attention, inputs = 8 * n * d * d + 4 * n * d * mlp_dim, 4 * n * n * d, {reads: 0.0}
  if memory is not None:
    source, s, dm = memory
    kv = 4 * s * dm * d
    dense, attention = dense + 4 * n * d * d + kv, attention + 4 * n * s * d
    inputs[source] = inputs.get(source, 0.0) + kv
  return Part(name, (name,), float(dense), float(attention), inputs)


def encoder(prefix: str, depth: int, length: int, width: int, mlp_dim: int, reads: str, scan: bool = False,
            memory: tuple[str, int, int] | None = None) -> list[Part]:
  """layers.Transformer `prefix`: `depth` blocks (one part "layers" when scanned) and its final
  norm, the part "{prefix}/encoder_norm" that later parts read."""
  parts, last = [], reads
  if scan and depth:
    one = block(f"{prefix}/layers", length, width, mlp_dim, reads, memory)
    parts, last = [dataclasses.replace(one, dense=depth * one.dense, attention=depth * one.attention,
                                       reads={r: depth * f for r, f in one.reads.items()})], one.name
  else:
    for i in range(depth):
      parts.append(block(f"{prefix}/block_{i}", length, width, mlp_dim, last, memory))
      last = parts[-1].name
  return parts + [Part(f"{prefix}/encoder_norm", (f"{prefix}/encoder_norm",), reads={last: 0.0})]


def attention_pool(name: str, queries: int, length: int, width: int, mlp_dim: int, reads: str) -> Part:
  """A MAP head / attentional pooler: `queries` learned probes attend over `length` tokens, then an MLP."""
  d = width
  kv = 4 * length * d * d
  dense = queries * (2 * d * d + 2 * d * d + 4 * d * mlp_dim) + kv
  return Part(name, (name,), float(dense), float(4 * queries * length * d), {reads: float(kv)})


def encoder_tokens(settings: dict[str, Any], image_size: int) -> int:
  """Patch tokens a training pass's encoder sees (no [CLS]): image_tokens less those patch dropout drops."""
  from vljax.models.vit import kept_patches  # lazy: the model files import this one
  return kept_patches(image_tokens(settings, image_size), settings.get("patch_dropout", 0.0))


def image_tokens(settings: dict[str, Any], image_size: int) -> int:
  """Patch tokens of one image (no [CLS])."""
  if image_size % settings["patch"]:
    raise ValueError(f"image_size {image_size} is not divisible by patch {settings['patch']}")
  return (image_size // settings["patch"]) ** 2


def vit_parts(settings: dict[str, Any], image_size: int, prefix: str = "img", out_dim: int | None = None,
              scan: bool = False) -> tuple[list[Part], str]:
  """(parts, the part whose output is the patch tokens) of a ViT given its vit_settings(); the last
  part is the pooled output (its head where out_dim is given and head=True)."""
  s, d, p = settings, settings["width"], settings["patch"]
  n = image_tokens(s, image_size)
  if s["stem"] == "patch":
    stem = linear(f"{prefix}/embedding", 2 * n * (p * p * 3) * d, "image")
  else:
    convs, size, cin = [], image_size, 3
    for c in s["stem_channels"]:
      size //= 2
      convs.append(2 * size * size * (9 * cin) * c)
      cin = c
    k = size // (image_size // p)
    convs.append(2 * n * (k * k * cin) * d)
    stem = Part(f"{prefix}/stem", (f"{prefix}/stem",), float(sum(convs)), reads={"image": float(convs[0])})
  extras = [f"{prefix}/{k}" for k, on in (("posemb", s["posemb"] == "learned"), ("cls", s["pool"] == "tok"),
                                          ("pre_norm", s["pre_norm"])) if on]
  parts = [stem, Part(f"{prefix}/tokens", tuple(extras), reads={stem.name: 0.0})]
  kept = encoder_tokens(s, image_size)  # patch dropout: the encoder sees fewer
  length = kept + 1 if s["pool"] == "tok" else kept
  parts += encoder(f"{prefix}/encoder", s["depth"], length, d, s["mlp_dim"], parts[-1].name, scan)
  tokens = parts[-1].name
  if s["pool"] == "map":
    parts.append(attention_pool(f"{prefix}/map", 1, kept, d, s["mlp_dim"], tokens))
  if out_dim is not None and s["head"]:
    parts.append(linear(f"{prefix}/head", 2 * d * out_dim, parts[-1].name))
  return parts, tokens


def text_parts(settings: dict[str, Any], length: int, prefix: str = "txt", out_dim: int | None = None,
               scan: bool = False) -> list[Part]:
  """A TextTransformer given its text_settings() over `length` ids (+ [CLS] where pool="cls"); the last
  part is the pooled output."""
  s, d, cls = settings, settings["width"], settings["pool"] == "cls"
  params = (f"{prefix}/embedding", f"{prefix}/posemb") + ((f"{prefix}/cls",) if cls else ())
  parts = [Part(f"{prefix}/embed", params, reads={"text": 0.0})]
  parts += encoder(f"{prefix}/encoder", s["depth"], length + cls, d, s["mlp_dim"], parts[-1].name, scan)
  if s["pool"] == "map":
    parts.append(attention_pool(f"{prefix}/map", 1, length, d, s["mlp_dim"], parts[-1].name))
  if out_dim is not None and s["head"]:
    parts.append(linear(f"{prefix}/head", 2 * d * out_dim, parts[-1].name))
  return parts


def decoder_lm(text: dict[str, Any], length: int, reads: str, prefix: str = "lm", head: str = "logits",
               scan: bool = False, head_length: int | None = None) -> list[Part]:
  """A decoder-only LM's causal blocks over `length` positions of part `reads`, and its vocab head
  (over head_length positions, default all)."""
  d = text["width"]
  parts = encoder(prefix, text["depth"], length, d, text["mlp_dim"], reads, scan)
  positions = length if head_length is None else head_length
  return parts + [linear(head, 2 * positions * d * text["vocab_size"], parts[-1].name)]
