"""The legacy model names (two_tower, coca, cappa) as configurations of the composable model: per
name, its config and its param tree translated, so that both compute the same outputs
(tests/test_legacy_equivalence.py, against the legacy classes kept in tests/legacy_models.py).

  two_tower  img/head -> img_proj, txt/head -> txt_proj (head=False: *_proj=False; head_bias ->
             *_proj_bias)
  coca       pool_caption -> memory_pool, pool_contrastive -> img_pool, img_head -> img_proj,
             txt + cls + unimodal -> txt (a causal text tower with pool="cls"), txt_head -> txt_proj,
             multimodal -> dec (decoder.input="text_tower")
  cappa      txt -> dec_embed (decoder mode="parallel")

Each config translation takes the legacy model config (with or without "name") and returns a
composable model config that leaves unset what the legacy one left unset, so a run fills both alike
(vljax/models/resolve.py: vocab_size, max_len, dtypes); the param functions take params (boxed or
not) and return a new tree, renaming paths and copying nothing else. The names stay usable: a model
config naming one builds the composable model (registry aliases); a run config naming one is
upgraded in place, its `frozen` regexes re-expressed over composable paths (two_tower's "img/.*"
froze img/head, which composable calls img_proj); a checkpoint whose metadata names one resumes and
loads through the param translation (vljax/train/checkpoint.py, vljax/checkpoint_io.py).
"""

from __future__ import annotations

from typing import Any, Callable

import re

import jax
import jax.numpy as jnp
from flax import traverse_util

from vljax.models import model_config
from vljax.models.layers import DEFAULT_ACTIVATION, DEFAULT_NORM_EPS, check_choice
from vljax.models.model_config import COMMON_DEFAULTS
from vljax.models.registry import _to_dict, get_model, register_alias
from vljax.models.text import text_settings
from vljax.models.vit import vit_settings

HEAD_KEYS = ("head", "head_bias")
# Each legacy model's config keys (besides "name") and their defaults.
TWO_TOWER_DEFAULTS: dict[str, Any] = dict(embed_dim=128, image=None, text=None, logit_scale_init=1 / 0.07,
                                          logit_bias_init=None, max_logit_scale=100.0)
COCA_DEFAULTS: dict[str, Any] = dict(embed_dim=128, image=None, text=None, multimodal_depth=None, pooler="cascade",
                                     num_queries=256, logit_scale_init=1 / 0.07, max_logit_scale=100.0,
                                     logit_bias_init=None)
CAPPA_DEFAULTS: dict[str, Any] = dict(image=None, text=None, parallel_fraction=0.75)
COCA_POOLERS = ("cascade", "parallel")
TOWERS = {"image": vit_settings, "text": text_settings}
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


def resolve_two_tower(cfg: dict[str, Any]) -> dict[str, Any]:
  """A two_tower config with every default filled; image/text become full tower settings."""
  return model_config.resolve("two_tower", cfg, TWO_TOWER_DEFAULTS, TOWERS)


def resolve_coca(cfg: dict[str, Any]) -> dict[str, Any]:
  """A coca config with every default filled (multimodal_depth: the text variant's depth)."""
  c = model_config.resolve("coca", cfg, COCA_DEFAULTS, TOWERS)
  model_config.check_image_tokens_only("coca", c["image"])
  if c["multimodal_depth"] is None:
    c["multimodal_depth"] = c["text"]["depth"]
  check_choice("CoCa pooler", c["pooler"], COCA_POOLERS)
  if c["num_queries"] < 1:
    raise ValueError(f"CoCa num_queries must be >= 1, got {c['num_queries']}")
  return c


def resolve_cappa(cfg: dict[str, Any]) -> dict[str, Any]:
  """A cappa config with every default filled (the text settings are the decoder's)."""
  return model_config.resolve("cappa", cfg, CAPPA_DEFAULTS, TOWERS)


def _tower(given: dict[str, Any]) -> dict[str, Any]:
  """A legacy tower config less its head keys (composable's projections are the contrastive head's)."""
  return {k: v for k, v in given.items() if k not in HEAD_KEYS}


def _composable(raw: dict[str, Any], **parts: Any) -> dict[str, Any]:
  return dict(name="composable", **{k: raw[k] for k in COMMON_DEFAULTS if k in raw}, **parts)


def two_tower_config(cfg: Any) -> dict[str, Any]:
  """CLIP/SigLIP/LiT: each tower's head becomes the contrastive head's projection of that tower."""
  raw, c = _legacy(cfg, "two_tower", resolve_two_tower)
  contrastive = {k: c[k] for k in CONTRASTIVE_KEYS}
  for tower, legacy in (("image", c["image"]), ("text", c["text"])):
    contrastive[f"{tower}_proj"] = legacy["head"]
    if legacy["head"]:
      contrastive[f"{tower}_proj_bias"] = legacy["head_bias"]
  return _composable(raw, image=_tower(raw["image"]), text=_tower(raw["text"]), contrastive=contrastive)


def coca_config(cfg: Any) -> dict[str, Any]:
  """CoCa: its unimodal decoder is a causal text tower pooling an appended [CLS]; the multimodal
  decoder continues from its tokens; the captioning pooler is the memory pooler."""
  raw, c = _legacy(cfg, "coca", resolve_coca)
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
  raw, c = _legacy(cfg, "cappa", resolve_cappa)
  # CapPa's decoder blocks took the default activation and norm epsilon whatever text.* says.
  decoder = dict(_tower(raw["text"]), activation=DEFAULT_ACTIVATION, norm_eps=DEFAULT_NORM_EPS, mode="parallel",
                 parallel_fraction=c["parallel_fraction"])
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


# legacy model name -> {legacy path prefix: composable path prefix} (whole segments)
PARAM_RENAMES: dict[str, dict[str, str]] = {
    "two_tower": {"img/head": "img_proj", "txt/head": "txt_proj"},
    "coca": {"pool_caption": "memory_pool", "pool_contrastive": "img_pool", "img_head": "img_proj",
             "cls": "txt/cls", "unimodal": "txt/encoder", "txt_head": "txt_proj", "multimodal": "dec"},
    "cappa": {"txt": "dec_embed"},
}


def two_tower_params(params: Any) -> dict[str, Any]:
  return rename(params, PARAM_RENAMES["two_tower"])


def coca_params(params: Any) -> dict[str, Any]:
  return rename(params, PARAM_RENAMES["coca"])


def cappa_params(params: Any) -> dict[str, Any]:
  return rename(params, PARAM_RENAMES["cappa"])


def to_legacy_params(name: str, params: Any) -> dict[str, Any]:
  """The inverse of the `name` model's param translation: composable paths -> the legacy ones."""
  return rename(params, {new: old for old, new in PARAM_RENAMES[name].items()})


def legacy_path(name: str, path: str) -> str:
  """The legacy path of one composable param path ("img_proj/kernel" -> "img/head/kernel")."""
  for old, new in PARAM_RENAMES[name].items():
    if path == new or path.startswith(new + "/"):
      return old + path[len(new):]
  return path


# legacy model name -> (config translation, params translation)
TRANSLATIONS: dict[str, tuple[Callable[[Any], dict], Callable[[Any], dict]]] = {
    "two_tower": (two_tower_config, two_tower_params),
    "coca": (coca_config, coca_params),
    "cappa": (cappa_config, cappa_params),
}
for _name, (_config, _) in TRANSLATIONS.items():
  register_alias(_name, _config)


def checkpoint_model(meta: dict) -> str | None:
  """The legacy model name a checkpoint's metadata records, or None for any other model."""
  name = meta.get("model_name")
  return name if name in TRANSLATIONS else None


def map_state(state: Any, fn: Callable[[Any], dict]) -> Any:
  """A TrainState with `fn` (a param translation) applied to its params and to each param-shaped
  dict of its optimizer state (optax keeps Adam's moments as trees like the trainable params)."""
  return state.replace(params=fn(state.params), opt_state=_map_dicts(state.opt_state, fn))


def _map_dicts(tree: Any, fn: Callable[[Any], dict]) -> Any:
  if hasattr(tree, "items"):
    return fn(tree)
  if isinstance(tree, (tuple, list)):
    children = [_map_dicts(child, fn) for child in tree]
    return type(tree)(*children) if hasattr(tree, "_fields") else type(tree)(children)
  return tree


def upgrade_config(cfg: Any) -> str | None:
  """A run config (ConfigDict) naming a legacy model, upgraded in place: its model the composable
  equivalent, its `frozen` regexes re-expressed over composable paths so that the same params stay
  frozen. Returns the legacy name, or None (the config left as it was)."""
  name = cfg.model.get("name")
  if name not in TRANSLATIONS:
    return None
  model = TRANSLATIONS[name][0](cfg.model)
  if cfg.get("frozen"):
    cfg.frozen = translate_frozen(name, tuple(cfg.frozen), _param_paths(model, cfg.data))
  cfg.model = model
  return name


def translate_frozen(name: str, patterns: tuple[str, ...], paths: list[str]) -> tuple[str, ...]:
  """Regexes freezing exactly the composable params whose legacy paths `patterns` matched: the
  patterns that freeze nothing else as they are (one that matched nothing stays, for the error that
  names it), then the renamed subtrees frozen whole, then any param left, each by its escaped path."""
  compiled = [re.compile(p) for p in patterns]
  frozen = {p for p in paths if any(c.fullmatch(legacy_path(name, p)) for c in compiled)}

  def keep(c: re.Pattern) -> bool:
    matched = {p for p in paths if c.fullmatch(p)}
    return matched <= frozen and bool(matched or not any(c.fullmatch(legacy_path(name, p)) for p in paths))

  kept = [c for c in compiled if keep(c)]
  left = {p for p in frozen if not any(c.fullmatch(p) for c in kept)}
  out = [c.pattern for c in kept]
  for new in PARAM_RENAMES[name].values():
    under = {p for p in paths if p == new or p.startswith(new + "/")}
    if under and under <= left:
      out.append(re.escape(new) + ("" if under == {new} else "/.*"))
      left -= under
  return tuple(out + sorted(re.escape(p) for p in left))


def _param_paths(model: dict[str, Any], data: Any) -> list[str]:
  """The param paths of a composable model config (shapes only: nothing is computed)."""
  m = dict(model)
  for key in ("text", "decoder"):
    if m.get(key):
      m[key] = dict(m[key], vocab_size=m[key].get("vocab_size") or 128, max_len=m[key].get("max_len") or 8)
  size = int(data.get("image_size", 64)) if data is not None else 64
  inputs = dict(image=jnp.zeros((1, size, size, 3)), text=jnp.zeros((1, 1), jnp.int32))
  params = jax.eval_shape(lambda r: get_model(m).init(r, **inputs)["params"], jax.random.PRNGKey(0))
  return sorted(traverse_util.flatten_dict(_plain(params), sep="/"))
