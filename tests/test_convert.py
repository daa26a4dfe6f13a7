"""Importing CLIP / SigLIP weights: every format against Hugging Face transformers' PyTorch models
(see hf_reference.py), and position-embedding resampling."""

import numpy as np
import pytest
from flax import traverse_util

pytest.importorskip("torch")
pytest.importorskip("transformers")

from hf_reference import (SMALL_IMAGE, SMALL_LEN, SMALL_VOCAB, assert_matches, clip_ids,  # noqa: E402
                          pixels, reference_family, siglip_ids, vljax_outputs, write_checkpoint)
from vljax import convert  # noqa: E402
from vljax.convert import towers  # noqa: E402
from vljax.data import images as images_lib  # noqa: E402
from vljax.data import pipeline  # noqa: E402


# ---- numerics, every format -------------------------------------------------------------------

@pytest.mark.cross_path
@pytest.mark.parametrize("fmt,file", [("hf_clip", None), ("openai_clip", "clip.safetensors"),
                                      ("openai_clip", "clip.pt"), ("openai_clip", "clip_jit.pt")])
def test_small_clip_matches_transformers(small_clip, tmp_path, fmt, file):
  path = small_clip["folder"] if file is None else write_checkpoint(small_clip, fmt, tmp_path / file)
  assert convert.detect_format(str(path)) == fmt
  converted = convert.import_checkpoint(str(path))
  assert converted.data["format"] == fmt and converted.data["image_size"] == SMALL_IMAGE
  c = converted.model_cfg
  assert (c["image"]["activation"], c["image"]["norm_eps"], c["text"]["causal"]) == ("quick_gelu", 1e-5, True)
  assert c["text"]["vocab_size"] == 128  # 1 + 100 + <image>, <eoc>: padded to 128
  table = converted.params["txt"]["embedding"]["embedding"]
  hf_table = small_clip["sd"]["text_model.embeddings.token_embedding.weight"]
  np.testing.assert_array_equal(table[1:SMALL_VOCAB + 1], hf_table)  # vljax id = HF id + 1
  assert not table[0].any() and not table[SMALL_VOCAB + 1:].any()
  ours = vljax_outputs(converted, small_clip["pixels"], small_clip["ids"])
  assert_matches(ours, small_clip["ref"], f"small CLIP via {fmt}")


@pytest.mark.cross_path
def test_clip_normalised_inputs_keep_the_published_patch_embedding(small_clip):
  # Default: CLIP's mean/std are folded into the patch embedding for vljax's [-1, 1] pixels (exact: the
  # numerics tests above). With input_normalization="clip" the conv is kept as published, bias zero.
  assert np.array_equal(images_lib.normalize(small_clip["pixels"], "siglip"),
                        pipeline.preprocess_images(small_clip["pixels"]))
  converted = convert.import_checkpoint(str(small_clip["folder"]), input_normalization="clip")
  assert converted.data["normalization"] == "clip"
  embedding = converted.params["img"]["embedding"]
  conv = small_clip["sd"]["vision_model.embeddings.patch_embedding.weight"]
  # the published conv, transposed: the same numbers up to the float32 cast
  np.testing.assert_allclose(embedding["kernel"], conv.transpose(2, 3, 1, 0), rtol=1e-6)
  assert not embedding["bias"].any()
  ours = vljax_outputs(converted, small_clip["pixels"], small_clip["ids"], normalization="clip")
  assert_matches(ours, small_clip["ref"], "small CLIP, clip-normalised inputs")


@pytest.mark.cross_path
@pytest.mark.parametrize("fmt,file", [("hf_siglip", None), ("big_vision_siglip", "siglip.npz"),
                                      ("big_vision_siglip", "siglip_scanned.npz")])
def test_small_siglip_matches_transformers(small_siglip, tmp_path, fmt, file):
  path = small_siglip["folder"] if file is None else write_checkpoint(small_siglip, fmt, tmp_path / file)
  assert convert.detect_format(str(path)) == fmt
  converted = convert.import_checkpoint(str(path))
  c = converted.model_cfg
  h = c["contrastive"]
  assert (c["image"]["pool"], h["image_proj"], c["text"]["causal"], h["text_proj_bias"]) == ("map", False, False, True)
  assert h["logit_bias_init"] == pytest.approx(float(small_siglip["sd"]["logit_bias"][0]))
  assert "img_proj" not in converted.params and "b" in converted.params
  ours = vljax_outputs(converted, small_siglip["pixels"], small_siglip["ids"])
  assert_matches(ours, small_siglip["ref"], f"small SigLIP via {fmt}")


@pytest.mark.cross_path
@pytest.mark.slow
def test_clip_vit_b32_every_format_matches_transformers(tmp_path):
  family = reference_family("clip", False, tmp_path)
  _full_size_formats_match(family, [("hf_clip", family["folder"]),
                                    ("openai_clip", write_checkpoint(family, "openai_clip", tmp_path / "b32.safetensors"))],
                           ("B/32", "B", 512, 77), "CLIP B/32")


@pytest.mark.cross_path
@pytest.mark.slow
def test_siglip_b16_every_format_matches_transformers(tmp_path):
  family = reference_family("siglip", False, tmp_path)
  _full_size_formats_match(family, [("hf_siglip", family["folder"]),
                                    ("big_vision_siglip", write_checkpoint(family, "big_vision_siglip", tmp_path / "b16.npz"))],
                           ("B/16", "L", 768, 64), "SigLIP B/16")


def _full_size_formats_match(family, formats, sizes, name):
  """The first format's import runs against the reference; the others must import to the very same
  config and parameters (a full-size forward each would only repeat it)."""
  first = None
  for fmt, path in formats:
    converted = convert.import_checkpoint(str(path))
    c = converted.model_cfg
    assert (c["image"]["variant"], c["text"]["variant"], c["contrastive"]["embed_dim"], c["text"]["max_len"]) == sizes
    if first is None:
      first = converted
      assert_matches(vljax_outputs(converted, family["pixels"], family["ids"]), family["ref"], f"{name} via {fmt}")
      continue
    assert c == first.model_cfg, fmt
    want = traverse_util.flatten_dict(first.params, sep="/")
    got = traverse_util.flatten_dict(converted.params, sep="/")
    assert got.keys() == want.keys(), fmt
    for key in want:
      np.testing.assert_array_equal(got[key], want[key], err_msg=f"{name} via {fmt}: {key}")


# ---- position embedding resampling --------------------------------------------------------------

def test_resize_posemb_keeps_the_class_row_and_resamples_the_grid():
  grid, new = 7, 14
  yy, xx = np.mgrid[:grid, :grid].astype(np.float32)
  field = lambda y, x: np.stack([np.sin(x / 3), np.cos(y / 4), np.full_like(x, 0.5)], axis=-1)
  cls = np.array([[9.0, -9.0, 3.0]], np.float32)
  posemb = np.concatenate([cls, field(yy, xx).reshape(-1, 3)])
  out = towers.resize_posemb(posemb, grid, new, num_prefix=1)
  assert out.shape == (1 + new * new, 3)
  np.testing.assert_array_equal(out[0], cls[0])
  assert towers.resize_posemb(posemb, grid, grid, num_prefix=1) is posemb
  # The new grid's cell centres, in the old grid's coordinates: the resampled field follows the
  # smooth one (away from the border, where the resampling kernel is cut) and constants stay exact.
  centres = (np.arange(new) + 0.5) * grid / new - 0.5
  expected = field(*np.meshgrid(centres, centres, indexing="ij"))
  got = out[1:].reshape(new, new, 3)
  np.testing.assert_allclose(got[2:-2, 2:-2], expected[2:-2, 2:-2], atol=0.02)
  np.testing.assert_allclose(got[..., 2], 0.5, atol=1e-6)


@pytest.mark.cross_path
def test_import_at_another_image_size_resamples_clip_and_siglip_posembs(small_clip, small_siglip):
  clip = convert.import_checkpoint(str(small_clip["folder"]), image_size=48)
  siglip = convert.import_checkpoint(str(small_siglip["folder"]), image_size=48)
  assert clip.data["image_size"] == siglip.data["image_size"] == 48
  clip_pe = clip.params["img"]["posemb"]["pos_embedding"]
  original = small_clip["sd"]["vision_model.embeddings.position_embedding.weight"]
  assert clip_pe.shape == (1 + 6 * 6, 128) and siglip.params["img"]["posemb"]["pos_embedding"].shape == (36, 128)
  np.testing.assert_array_equal(clip_pe[0], original[0])  # the class token's row is kept
  # the same bilinear resize, through the importer: float32 interpolation roundings
  np.testing.assert_allclose(clip_pe[1:], towers.resize_posemb(original[1:], 4, 6), rtol=1e-6)
  for converted in (clip, siglip):
    ids = clip_ids(SMALL_VOCAB, SMALL_LEN) if converted is clip else siglip_ids(SMALL_VOCAB, SMALL_LEN)
    out = vljax_outputs(converted, pixels(4, 48), ids)
    assert out["img"].shape[0] == 4 and np.isfinite(out["img"]).all()
  with pytest.raises(ValueError, match="image_size 50 is not divisible by the checkpoint's patch size 8"):
    convert.import_checkpoint(str(small_clip["folder"]), image_size=50)
