"""The legacy model classes (two_tower, coca, cappa) as configurations of the composable model: per
model, its config and its param tree translated, so that both compute the same outputs
(tests/test_legacy_equivalence.py).

  two_tower  img/head -> img_proj, txt/head -> txt_proj (head=False: *_proj=False; head_bias ->
             *_proj_bias)
  coca       pool_caption -> memory_pool, pool_contrastive -> img_pool, img_head -> img_proj,
             txt + cls + unimodal -> txt (a causal text tower with pool="cls"), txt_head -> txt_proj,
             multimodal -> dec (decoder.input="text_tower")
  cappa      txt -> dec_embed (decoder mode="parallel")

Each translation takes the legacy model config (with or without "name") and returns a composable
model config that leaves unset what the legacy one left unset, so a run fills both alike
(vljax/models/resolve.py: vocab_size, max_len, dtypes); the param functions take params (boxed or
not) and return a new tree, renaming paths and copying nothing else. A recipe's `frozen` regexes
follow the renames: two_tower's "img/.*" (LiT) froze img/head, which composable calls img_proj.
"""

from __future__ import annotations

from typing import Any, Callable

from flax import traverse_util

from vljax.models import cappa, coca, two_tower
from vljax.models.layers import DEFAULT_ACTIVATION, DEFAULT_NORM_EPS
from vljax.models.model_config import COMMON_DEFAULTS
from vljax.models.registry import _to_dict

HEAD_KEYS = ("head", "head_bias")
CONTRASTIVE_KEYS = ("embed_dim", "logit_scale_init", "logit_bias_init", "max_logit_scale")
# The text settings CoCa's multimodal decoder shares with its unimodal one.
SHARED_TEXT = ("width", "mlp_dim", "num_heads", "vocab_size", "max_len", "pad_id")


def _legacy(cfg: Any, name: str, resolve: Callable[[dict], dict]) -> tuple[dict, dict]:
  """(the raw config without "name", its resolved settings)."""
  raw = _to_dict(cfg)
  given = raw.pop("name", name)
  if given != name:
    raise ValueError(f"expected a {name!r} model config, got name={given!r}")
  return raw, resolve(dict(raw))


def _tower(given: dict[str, Any]) -> dict[str, Any]:
  """A legacy tower config less its head keys (composable's projections are the contrastive head's)."""
  return {k: v for k, v in given.items() if k not in HEAD_KEYS}


def _composable(raw: dict[str, Any], **parts: Any) -> dict[str, Any]:
  return dict(name="composable", **{k: raw[k] for k in COMMON_DEFAULTS if k in raw}, **parts)


def two_tower_config(cfg: Any) -> dict[str, Any]:
  """CLIP/SigLIP/LiT: each tower's head becomes the contrastive head's projection of that tower."""
  raw, c = _legacy(cfg, "two_tower", two_tower.resolve_config)
  contrastive = {k: c[k] for k in CONTRASTIVE_KEYS}
  for tower, legacy in (("image", c["image"]), ("text", c["text"])):
    contrastive[f"{tower}_proj"] = legacy["head"]
    if legacy["head"]:
      contrastive[f"{tower}_proj_bias"] = legacy["head_bias"]
  return _composable(raw, image=_tower(raw["image"]), text=_tower(raw["text"]), contrastive=contrastive)


def coca_config(cfg: Any) -> dict[str, Any]:
  """CoCa: its unimodal decoder is a causal text tower pooling an appended [CLS]; the multimodal
  decoder continues from its tokens; the captioning pooler is the memory pooler."""
  raw, c = _legacy(cfg, "coca", coca.resolve_config)
  given = raw["text"]
  # CoCa's text blocks take the default activation and norm epsilon whatever text.* says.
  text = dict(_tower(given), causal=True, pool="cls", activation=DEFAULT_ACTIVATION, norm_eps=DEFAULT_NORM_EPS)
  decoder = dict({k: given[k] for k in SHARED_TEXT if k in given}, variant=given["variant"],
                 depth=c["multimodal_depth"], memory_queries=c["num_queries"], input="text_tower")
  contrastive = dict({k: c[k] for k in CONTRASTIVE_KEYS}, image_pool="map",
                     image_pool_input="memory" if c["pooler"] == "cascade" else "tokens")
  return _composable(raw, image=_tower(raw["image"]), text=text, contrastive=contrastive, decoder=decoder)


def cappa_config(cfg: Any) -> dict[str, Any]:
  """CapPa: the composable decoder in parallel mode."""
  raw, c = _legacy(cfg, "cappa", cappa.resolve_config)
  decoder = dict(_tower(raw["text"]), mode="parallel", parallel_fraction=c["parallel_fraction"])
  return _composable(raw, image=_tower(raw["image"]), decoder=decoder)


def rename(params: Any, prefixes: dict[str, str]) -> dict[str, Any]:
  """params with every path starting with a key of `prefixes` (whole segments) moved under its value."""
  flat = traverse_util.flatten_dict(_plain(params), sep="/")
  out = {}
  for path, leaf in flat.items():
    for old, new in prefixes.items():
      if path == old or path.startswith(old + "/"):
        path = new + path[len(old):]
        break
    out[path] = leaf
  return traverse_util.unflatten_dict(out, sep="/")


def _plain(tree: Any) -> Any:
  """FrozenDict / dict nest -> dict nest (leaves untouched)."""
  if hasattr(tree, "items"):
    return {k: _plain(v) for k, v in tree.items()}
  return tree


def two_tower_params(params: Any) -> dict[str, Any]:
  return rename(params, {"img/head": "img_proj", "txt/head": "txt_proj"})


def coca_params(params: Any) -> dict[str, Any]:
  return rename(params, {"pool_caption": "memory_pool", "pool_contrastive": "img_pool", "img_head": "img_proj",
                         "cls": "txt/cls", "unimodal": "txt/encoder", "txt_head": "txt_proj",
                         "multimodal": "dec"})


def cappa_params(params: Any) -> dict[str, Any]:
  return rename(params, {"txt": "dec_embed"})


# legacy model name -> (config translation, params translation)
TRANSLATIONS: dict[str, tuple[Callable[[Any], dict], Callable[[Any], dict]]] = {
    "two_tower": (two_tower_config, two_tower_params),
    "coca": (coca_config, coca_params),
    "cappa": (cappa_config, cappa_params),
}
