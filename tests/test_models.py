"""Models: shapes, norms, scan/remat equivalence, masking, dtypes, logical axes, FLOPs, config errors."""

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import linen as nn
from flax.traverse_util import flatten_dict

from vljax.models import MODELS, get_model
from vljax.models import flops
from vljax.models.layers import Transformer, posemb_sincos_2d, unstack_layers
from vljax.models.text import make_text
from vljax.models.composable import clamp_log_scale
from vljax.models.vit import conv_as_matmul, vit_settings
from vljax.parallel.sharding import LOGICAL_RULES

B, IMG, LEN, VOCAB, EMBED = 4, 16, 8, 64, 16


def tiny_cfg(image=None, text=None, **overrides) -> dict:
  return dict(name="two_tower", embed_dim=EMBED, image=dict(dict(variant="mu/8"), **(image or {})),
              text=dict(dict(variant="mu", vocab_size=VOCAB, max_len=LEN), **(text or {})), **overrides)


def batch(seed=0, lengths=(8, 5, 3, 1), length=LEN):
  """Images and right-padded ids (pad_id=0) with the given number of real tokens."""
  rng = np.random.default_rng(seed)
  image = rng.uniform(size=(len(lengths), IMG, IMG, 3)).astype(np.float32)
  ids = np.zeros((len(lengths), length), np.int32)
  for i, n in enumerate(lengths):
    ids[i, :n] = rng.integers(1, VOCAB, size=n)
  return jnp.asarray(image), jnp.asarray(ids)


def random_params(model, *args, seed=0):
  """Random params of the right shapes without compiling init (XLA:CPU spends seconds on init's RNG)."""
  abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *args)["params"])
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: jnp.asarray(rng.normal(0, 0.2, a.shape), a.dtype), abstract)


def apply(model, variables, image=None, ids=None):
  return jax.jit(model.apply)(variables, image, ids)


@pytest.mark.parametrize("image,text", [
    (dict(pool="gap", stem="patch", posemb="learned"), dict(pool="last")),
    (dict(pool="tok", stem="conv", posemb="sincos2d"), dict(pool="first", causal=True)),
    (dict(pool="map", stem="conv", posemb="learned"), dict(pool="mean")),
    (dict(pool="gap", posemb="sincos2d"), dict(pool="map")),
])
def test_shapes_unit_norm_and_param_tree(image, text):
  model = get_model(tiny_cfg(image, text))
  img, ids = batch()
  params = random_params(model, img, ids)
  out = apply(model, {"params": params}, img, ids)
  assert set(out) == {"img_emb", "txt_emb", "img_tokens", "txt_tokens", "logit_scale"}
  assert out["img_emb"].shape == out["txt_emb"].shape == (B, EMBED)
  assert out["img_tokens"].shape == (B, (IMG // 8) ** 2, 32)
  assert out["txt_tokens"].shape == (B, LEN, 32)
  np.testing.assert_allclose(jnp.linalg.norm(out["img_emb"], axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(out["txt_emb"], axis=-1), 1.0, rtol=1e-5)
  # LiT freezes with regexes like "img/.*": the towers are top-level subtrees, their projections beside them.
  assert set(params) == {"img", "img_proj", "txt", "txt_proj", "t"}
  assert "head" not in params["img"] and "head" not in params["txt"]


def test_init_values_siglip_scale_bias_clamp_and_single_tower_calls():
  one_block = dict(depth=1)  # real init is compiled here: keep it small
  model = get_model(tiny_cfg(one_block, one_block, logit_scale_init=10.0, logit_bias_init=-10.0,
                             max_logit_scale=20.0))
  img, ids = batch()
  variables = jax.jit(model.init)(jax.random.key(0), img, ids)
  assert float(variables["params"]["t"].value) == pytest.approx(math.log(10.0))
  out = apply(model, variables, img, ids)
  np.testing.assert_allclose(out["logit_scale"], 10.0, rtol=1e-5)
  np.testing.assert_allclose(out["logit_bias"], -10.0)
  np.testing.assert_allclose(jnp.linalg.norm(out["img_emb"], axis=-1), 1.0, rtol=1e-5)
  assert set(apply(model, variables, image=img)) == {"img_emb", "img_tokens", "logit_scale", "logit_bias"}
  assert set(apply(model, variables, ids=ids)) == {"txt_emb", "txt_tokens", "logit_scale", "logit_bias"}
  # The cap is applied to the param after each update (as CLIP does), not inside the forward pass.
  params = clamp_log_scale(dict(nn.meta.unbox(variables["params"]), t=jnp.float32(10.0)), model.max_logit_scale)
  np.testing.assert_allclose(apply(model, {"params": params}, img, ids)["logit_scale"], 20.0, rtol=1e-5)
  clip = get_model(tiny_cfg())
  t = jax.eval_shape(clip.init, jax.random.key(0), img, ids)["params"]["t"]
  assert clip.contrastive["logit_scale_init"] == pytest.approx(1 / 0.07) and t.value.shape == ()


def encoder_inputs(length=LEN):
  x = jax.random.normal(jax.random.key(0), (2, length, 32))
  mask = jnp.arange(length)[None, :] < jnp.array([[length], [3]])  # second sequence: 3 real tokens
  return x, mask[:, None, None, :]


@pytest.mark.cross_path
def test_scan_matches_loop_after_unstacking():
  x, mask = encoder_inputs()
  scanned, looped = (Transformer(3, 64, 2, scan=True), Transformer(3, 64, 2, scan=False))
  params = random_params(scanned, x, mask)
  assert params["layers"]["mlp"]["fc1"]["kernel"].shape == (3, 32, 64)
  loop_params = unstack_layers(params, 3)
  assert jax.tree.structure(loop_params) == jax.tree.structure(random_params(looped, x, mask))
  a = jax.jit(scanned.apply)({"params": params}, x, mask)
  b = jax.jit(looped.apply)({"params": loop_params}, x, mask)
  # scanned vs unrolled layers: the same ops, fused differently across layer boundaries
  np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.cross_path
@pytest.mark.parametrize("scan", [pytest.param(False, marks=pytest.mark.slow), True])  # looped: a second variant
def test_remat_policies_give_same_output_and_grads(scan):
  x, mask = encoder_inputs()
  params = random_params(Transformer(2, 64, 2, scan=scan), x, mask)

  def value_and_grads(remat):
    model = Transformer(2, 64, 2, scan=scan, remat=remat)
    loss = lambda p, x: jnp.sum(jnp.sin(model.apply({"params": p}, x, mask)))
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)

  ref_loss, ref_grads = value_and_grads("none")
  for remat in ("full", "minimal", "save_qkv"):
    loss, grads = value_and_grads(remat)
    # remat recomputes the forward inside the backward: other fusions; gradients near 0 need the atol
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    jax.tree.map(lambda g, r: np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-4), grads, ref_grads)


def text_tower(**kw):
  return make_text("mu", vocab_size=VOCAB, max_len=12, **kw)


def test_causal_text_differs_and_never_looks_ahead():
  _, ids = batch()
  causal, bidir = text_tower(causal=True, pool="last"), text_tower(causal=False, pool="last")
  variables = {"params": random_params(causal, ids)}
  run_causal, run_bidir = jax.jit(causal.apply), jax.jit(bidir.apply)
  (pooled_c, tokens_c), (pooled_b, _) = run_causal(variables, ids), run_bidir(variables, ids)
  assert not np.allclose(pooled_c, pooled_b, atol=1e-4)
  changed = ids.at[:, 4:].set(7)  # new tokens after position 3 leave positions 0..3 untouched
  np.testing.assert_allclose(run_causal(variables, changed)[1][:, :4], tokens_c[:, :4], atol=1e-5)


@pytest.mark.cross_path
@pytest.mark.parametrize("pool", ["last", "first", "mean", "map"])
def test_text_embedding_ignores_padding(pool):
  model = text_tower(causal=False, pool=pool)
  _, ids = batch(lengths=(8, 5, 3, 1))
  params = random_params(model, ids)
  run = jax.jit(lambda p, ids: model.apply({"params": p}, ids)[0])
  pooled = run(params, ids)
  longer = jnp.pad(ids, ((0, 0), (0, 4)))  # more pad tokens after the EOS
  # masked padding vs a shorter row: the same attention terms plus exact zeros, other shapes
  np.testing.assert_allclose(run(params, longer), pooled, atol=1e-5)
  table = params["embedding"]["embedding"]
  params["embedding"]["embedding"] = table.at[0].set(5.0)  # what a pad token "says"
  np.testing.assert_allclose(run(params, ids), pooled, atol=1e-5)  # masked: other values, same zeros
  if pool == "last":  # the EOS token is the last real one
    pooled, tokens = jax.jit(model.apply)({"params": params}, ids)
    # pooling picks a token's vector: a copy, within numpy's default rtol=1e-7
    np.testing.assert_allclose(pooled, tokens[jnp.arange(B), jnp.array([7, 4, 2, 0])])


def test_bfloat16_compute_keeps_float32_params():
  model = get_model(tiny_cfg(dict(stem="conv", pool="map"), dict(pool="map"), dtype="bfloat16"))
  img, ids = batch()
  abstract = jax.eval_shape(model.init, jax.random.key(0), img, ids)
  assert {x.dtype for x in jax.tree.leaves(nn.meta.unbox(abstract))} == {jnp.dtype(jnp.float32)}
  out = apply(model, {"params": random_params(model, img, ids)}, img, ids)
  assert out["img_tokens"].dtype == jnp.bfloat16 and out["img_emb"].dtype == jnp.float32
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(out))


# The tower options that express CLIP and SigLIP exactly (vljax.convert builds these).
CLIP_IMAGE = dict(pool="tok", pre_norm=True, cls_posemb=True, head_bias=False, activation="quick_gelu",
                  norm_eps=1e-5)
CLIP_TEXT = dict(causal=True, pool="last", head_bias=False, activation="quick_gelu", norm_eps=1e-5)
SIGLIP_IMAGE = dict(pool="map", head=False)


def test_activations_and_default_unchanged():
  from vljax.models.layers import ACTIVATIONS, MlpBlock
  x = jnp.linspace(-4.0, 4.0, 101)
  np.testing.assert_allclose(ACTIVATIONS["quick_gelu"](x), x * jax.nn.sigmoid(1.702 * x), rtol=1e-6)
  np.testing.assert_allclose(ACTIVATIONS["gelu"](x), jax.nn.gelu(x, approximate=False), rtol=1e-6)
  np.testing.assert_allclose(ACTIVATIONS["gelu_tanh"](x), nn.gelu(x), rtol=1e-6)
  assert not np.allclose(ACTIVATIONS["gelu"](x), ACTIVATIONS["gelu_tanh"](x), rtol=0, atol=1e-5)
  h = jax.random.normal(jax.random.key(0), (2, 3, 8))
  params = MlpBlock(16).init(jax.random.key(1), h)
  default, tanh = MlpBlock(16).apply(params, h), MlpBlock(16, "gelu_tanh").apply(params, h)
  np.testing.assert_array_equal(default, tanh)  # existing models compute what they did
  assert not np.allclose(MlpBlock(16, "quick_gelu").apply(params, h), default, atol=1e-4)


def test_clip_and_siglip_tower_options_param_trees_and_outputs():
  img, ids = batch()
  clip = get_model(tiny_cfg(dict(CLIP_IMAGE), dict(CLIP_TEXT)))
  params = random_params(clip, img, ids)
  grid = (IMG // 8) ** 2
  assert params["img"]["posemb"]["pos_embedding"].shape == (grid + 1, 32)  # [CLS] has a row
  assert set(params["img"]["pre_norm"]) == {"scale", "bias"}
  assert set(params["img_proj"]) == set(params["txt_proj"]) == {"kernel"}
  out = apply(clip, {"params": params}, img, ids)
  assert out["img_tokens"].shape == (B, grid, 32) and out["img_emb"].shape == (B, EMBED)
  # eps and activation reach every LayerNorm and MLP: the same params compute differently without them
  plain = get_model(tiny_cfg(dict(CLIP_IMAGE, activation="gelu_tanh", norm_eps=1e-6), dict(CLIP_TEXT)))
  assert not np.allclose(apply(plain, {"params": params}, img, ids)["img_emb"], out["img_emb"], atol=1e-5)

  siglip = get_model(dict(tiny_cfg(dict(SIGLIP_IMAGE)), embed_dim=32, logit_bias_init=-10.0))
  params = random_params(siglip, img, ids)
  assert "img_proj" not in params and set(params["txt_proj"]) == {"kernel", "bias"}
  out = apply(siglip, {"params": params}, img, ids)
  assert out["img_emb"].shape == out["txt_emb"].shape == (B, 32)
  pooled, _ = jax.jit(siglip.img.apply)({"params": params["img"]}, img)
  np.testing.assert_allclose(out["img_emb"], pooled / jnp.linalg.norm(pooled, axis=-1, keepdims=True), rtol=1e-5)


@pytest.mark.cross_path
def test_eos_padded_text_pools_the_final_position():
  """SigLIP's rows are padded with EOS, not pad_id: every position is attended and "last" pools the final one."""
  model = text_tower(causal=False, pool="last")
  _, ids = batch(lengths=(8, 5, 3, 1))
  eos = 9
  rows = jnp.where(ids == 0, eos, ids)
  params = random_params(model, rows)
  pooled, tokens = jax.jit(model.apply)({"params": params}, rows)
  np.testing.assert_allclose(pooled, tokens[:, -1])  # a copy of the last token: default rtol=1e-7


def test_default_options_keep_the_param_tree():
  img, ids = batch()
  image = dict(pool="tok", pre_norm=False, cls_posemb=False, head=True, head_bias=True, activation="gelu_tanh",
               norm_eps=1e-6)
  text = dict(head=True, head_bias=True, activation="gelu_tanh", norm_eps=1e-6)
  shapes = lambda cfg: jax.tree.map(lambda x: x.shape, jax.eval_shape(get_model(cfg).init, jax.random.key(0), img,
                                                                      ids))
  assert shapes(tiny_cfg(dict(pool="tok"))) == shapes(tiny_cfg(image, text))


LOGICAL_CONFIGS = [
    tiny_cfg(dict(stem="conv", pool="tok"), dict(pool="map"), logit_bias_init=-10.0),
    tiny_cfg(dict(pool="map", posemb="sincos2d"), dict(causal=True), scan=True, remat="minimal"),
]


@pytest.mark.parametrize("cfg", LOGICAL_CONFIGS + [
    dict(name="two_tower", image=dict(variant="So400m/14", pool="map"), text=dict(variant="So400m"),
         scan=True),
    dict(name="two_tower", image=dict(variant="shapes/conv-64"),
         text=dict(variant="shapes-64", max_len=16)),
    dict(name="coca", image=dict(variant="mu/8"), text=dict(variant="mu", max_len=16), num_queries=4),
    dict(name="coca", image=dict(variant="mu/8"), text=dict(variant="mu", max_len=16), num_queries=4,
         pooler="parallel", scan=True),
    dict(name="cappa", image=dict(variant="mu/8"), text=dict(variant="mu", max_len=16), scan=True),
    tiny_cfg(dict(CLIP_IMAGE), dict(CLIP_TEXT)),
    dict(tiny_cfg(dict(SIGLIP_IMAGE), dict(head_bias=True)), embed_dim=32, logit_bias_init=-10.0, scan=True),
])
def test_every_param_has_logical_axes_that_map_to_the_mesh(cfg):
  model = get_model(cfg)
  size = 224 if "So400m" in cfg["image"]["variant"] else 64
  img, ids = jnp.zeros((8, size, size, 3)), jnp.ones((8, cfg["text"].get("max_len", 16)), jnp.int32)
  abstract = jax.eval_shape(model.init, jax.random.key(0), img, ids)
  leaves = flatten_dict(abstract["params"])
  for path, leaf in leaves.items():
    assert isinstance(leaf, nn.LogicallyPartitioned), "/".join(path)
    assert len(leaf.names) == leaf.value.ndim, ("/".join(path), leaf.names, leaf.value.shape)
  if cfg.get("scan"):
    assert any(leaf.names[:1] == ("layers",) for leaf in leaves.values())
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, LOGICAL_RULES)
  assert all(isinstance(s, jax.sharding.NamedSharding) for s in jax.tree.leaves(shardings))


@pytest.mark.cross_path
def test_sharded_params_and_apply_on_8_devices():
  model = get_model(LOGICAL_CONFIGS[1])
  img, ids = batch(lengths=(8, 5, 3, 1, 2, 6, 7, 4))
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
  params = random_params(model, img, ids)
  reference = apply(model, {"params": params}, img, ids)
  with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
    abstract = jax.eval_shape(model.init, jax.random.key(0), img, ids)["params"]
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, LOGICAL_RULES)
    params = jax.device_put(params, shardings)
    fc1 = params["img"]["encoder"]["layers"]["mlp"]["fc1"]["kernel"]
    assert fc1.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    out = apply(model, {"params": params}, img, ids)
  # fsdp x tensor: matmul sums split over the tensor axis and added by a collective (unit vectors)
  np.testing.assert_allclose(out["img_emb"], reference["img_emb"], atol=1e-5)
  np.testing.assert_allclose(out["txt_emb"], reference["txt_emb"], atol=1e-5)


@pytest.mark.parametrize("cfg", [
    dict(name="two_tower", embed_dim=128, image=dict(variant="shapes/conv-64", pool="map"),
         text=dict(variant="shapes-64", vocab_size=1000, max_len=16)),
    dict(name="coca", embed_dim=128, image=dict(variant="shapes/conv-64"), num_queries=32,
         text=dict(variant="shapes-64", vocab_size=1000, max_len=16)),
    dict(name="coca", embed_dim=128, image=dict(variant="shapes/conv-64"), num_queries=32, pooler="parallel",
         text=dict(variant="shapes-64", vocab_size=1000, max_len=16), multimodal_depth=1),
    dict(name="cappa", image=dict(variant="shapes/conv-64"), text=dict(variant="shapes-64", vocab_size=1000,
                                                                       max_len=16)),
    pytest.param(dict(name="two_tower", embed_dim=64, image=dict(variant="shapes/patch-64", pool="map", head=False),
                      text=dict(variant="shapes-64", vocab_size=1000, max_len=16)), id="two_tower-no-image-head"),
], ids=lambda c: c["name"] + "-" + c.get("pooler", ""))
def test_flops_match_xla_cost_analysis(cfg):
  model, n = get_model(cfg), 2
  img, ids = jnp.zeros((n, 64, 64, 3)), jnp.ones((n, 16), jnp.int32)
  abstract = jax.eval_shape(model.init, jax.random.key(0), img, ids)
  cost = jax.jit(model.apply).lower(abstract, img, ids).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  forward = flops.forward_flops(flops.model_parts(cfg, flops.Inputs(image_size=64, images=1, text_len=16)))
  assert forward == pytest.approx(cost["flops"] / n, rel=0.15)


@pytest.mark.cross_path
def test_conv_as_matmul_matches_lax_conv():
  x = jax.random.normal(jax.random.key(0), (2, 12, 12, 5))

  @functools.partial(jax.jit, static_argnums=(1, 2, 3))
  def both(x, k, stride, pad):
    w = jax.random.normal(jax.random.key(1), (k, k, 5, 7))
    ref = jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return conv_as_matmul(x, w, stride, pad), ref

  for k, stride, pad in ((3, 2, 1), (2, 2, 0)):
    # im2col matmul vs lax.conv: sums of up to 5*5*5 products of normals, in other orders (|sum| ~ 10)
    np.testing.assert_allclose(*both(x, k, stride, pad), atol=1e-4)


def test_variants_and_overrides():
  s = vit_settings("So400m/14")
  assert (s["width"], s["depth"], s["mlp_dim"], s["num_heads"], s["patch"]) == (1152, 27, 4304, 16, 14)
  s = vit_settings("shapes/conv-64", depth=2, stem_channels=[16, 32])
  assert (s["width"], s["depth"], s["patch"], s["stem"], s["stem_channels"]) == (64, 2, 8, "conv", (16, 32))
  assert posemb_sincos_2d(8, 8, 64).shape == (64, 64)
  assert set(MODELS) >= {"composable"}
  cfg = ml_collections.ConfigDict(tiny_cfg())
  assert get_model(cfg).txt.vocab_size == VOCAB


@pytest.mark.parametrize("cfg,bad", [
    (dict(tiny_cfg(), name="clipp"), "clipp"),
    (tiny_cfg(dict(variant="X/16")), "X/16"),
    (tiny_cfg(dict(variant="B/big")), "B/big"),
    (tiny_cfg(dict(pool="cls")), "cls"),
    (tiny_cfg(dict(stem="hybrid")), "hybrid"),
    (tiny_cfg(dict(posemb="rope")), "rope"),
    (tiny_cfg(dict(widht=8)), "widht"),
    (tiny_cfg(text=dict(variant="huge")), "huge"),
    (tiny_cfg(text=dict(pool="eos")), "eos"),
    (tiny_cfg(text=dict(vocab=8)), "vocab"),
    (tiny_cfg(remat="some"), "some"),
    (tiny_cfg(attention_impl="flash"), "flash"),
    (tiny_cfg(dtype="bf16"), "bf16"),
    (tiny_cfg(embed=8), "embed"),
    (tiny_cfg(dict(activation="relu")), "relu"),
    (tiny_cfg(text=dict(activation="swish")), "swish"),
    (tiny_cfg(dict(cls_posemb=True)), "cls_posemb=True .* needs pool='tok' and posemb='learned', got pool='gap'"),
    (tiny_cfg(dict(head=False)), "contrastive.image_proj=False makes the image width 32 the embedding, but contrastive.embed_dim is 16"),
])
def test_bad_config_names_the_bad_value(cfg, bad):
  with pytest.raises(ValueError, match=bad):
    get_model(cfg)


def test_conv_stem_and_image_size_must_fit_the_patch():
  with pytest.raises(ValueError, match="patch 6"):
    get_model(tiny_cfg(dict(stem="conv", patch=6)))
  model = get_model(tiny_cfg())
  with pytest.raises(ValueError, match="image size 12x12"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 12, 12, 3)), jnp.ones((1, LEN), jnp.int32))


def test_remat_policies_trade_memory_for_recompute():
  """Under scan (one compiled body, so XLA cannot reschedule across layers), each policy saves
  less than the one before it and recomputes more."""
  x = jnp.ones((4, 64, 128))
  temp, flops = [], []
  for remat in ("none", "minimal", "save_qkv", "full"):
    model = Transformer(3, 512, 4, scan=True, remat=remat)
    params = jax.eval_shape(model.init, jax.random.key(0), x)
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(model.apply(p, x) ** 2)))
    compiled = grad.lower(params, x).compile()
    temp.append(compiled.memory_analysis().temp_size_in_bytes)
    cost = compiled.cost_analysis()
    flops.append((cost[0] if isinstance(cost, list) else cost)["flops"])
  assert temp == sorted(temp, reverse=True) and len(set(temp)) == 4, temp
  assert flops == sorted(flops), flops


def test_cudnn_attention_falls_back_to_xla_with_a_log_line(caplog):
  from vljax.models import layers
  q = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 2, 16)), jnp.float32)
  mask = jnp.tril(jnp.ones((8, 8), bool))[None, None]
  with caplog.at_level("WARNING"):
    got = layers.attention(q, q, q, mask, False, "cudnn")  # no GPU here: cuDNN refuses while tracing
  np.testing.assert_array_equal(got, layers.xla_attention(q, q, q, mask, False))
  assert "cuDNN unavailable" in caplog.text and "using XLA" in caplog.text


@pytest.mark.cross_path
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("masked, causal", [(False, False), (True, False), (False, True), (True, True)])
def test_the_xla_attention_path_computes_what_jax_nn_does(masked, causal, dtype):
  """vljax's XLA attention (heads next to the batch) against jax.nn.dot_product_attention's XLA path:
  the same sums in other orders. float32: each output is a convex combination of values of size ~3,
  within a few ulps of 3 (2e-6); bf16: both round the float32 result to bf16, within one bf16 ulp."""
  from vljax.models import layers
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 7, 4, 16)), dtype) for _ in range(3))
  mask = jnp.asarray(rng.random((2, 1, 7, 7)) < 0.7) | jnp.eye(7, dtype=bool) if masked else None
  got = layers.xla_attention(q, k, v, mask, causal)
  want = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, implementation="xla")
  assert got.dtype == want.dtype and got.shape == want.shape
  tolerance = 2e-6 if dtype == jnp.float32 else 2 ** -7 * 4
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=0, atol=tolerance)


@pytest.mark.parametrize("image,text,top", [
    (CLIP_IMAGE, CLIP_TEXT, dict(embed_dim=512)),
    (SIGLIP_IMAGE, {}, dict(embed_dim=384, logit_bias_init=-10.0)),
], ids=["clip", "siglip"])
def test_clip_and_siglip_options_keep_98_percent_of_param_bytes_sharded(image, text, top):
  """As tests/test_sharding_coverage.py checks for the default towers, at S width on fsdp=4 x tensor=2."""
  model = get_model(dict(name="two_tower", image=dict(image, variant="S/16"),
                         text=dict(text, variant="S", vocab_size=32000, max_len=64), **top))
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((8, 224, 224, 3)), jnp.ones((8, 64), jnp.int32))
  mesh = jax.make_mesh((1, 4, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
  specs = nn.get_partition_spec(abstract["params"])
  shardings = flatten_dict(nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_RULES))
  sizes = {k: int(np.prod(v.shape)) for k, v in flatten_dict(nn.meta.unbox(abstract["params"])).items()}
  sharded = sum(n for k, n in sizes.items() if any(axis is not None for axis in shardings[k].spec))
  assert sharded / sum(sizes.values()) >= 0.98


def test_max_pool_gradient_goes_to_the_maximum_by_index():
  """max_over_tokens is jnp.max forward; its gradient is jnp.max's where the maximum is unique, and
  whole on the first of tied tokens (never a division by the count of maximisers)."""
  from vljax.models.vit import max_over_tokens
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 3)), jnp.float32)
  np.testing.assert_array_equal(max_over_tokens(x), jnp.max(x, axis=1))
  np.testing.assert_array_equal(jax.grad(lambda v: max_over_tokens(v).sum())(x),
                                jax.grad(lambda v: jnp.max(v, axis=1).sum())(x))
  tied = jnp.ones((1, 4, 2))
  grad = jax.grad(lambda v: max_over_tokens(v).sum())(tied)
  np.testing.assert_array_equal(grad[0, :, 0], [1, 0, 0, 0])
