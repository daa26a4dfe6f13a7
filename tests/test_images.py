"""Image decoding, crops and normalisation presets (vljax.data.images)."""

import io

import numpy as np
import pytest
from PIL import Image

from real_data import encode, shapes_pairs
from vljax.data import images, pipeline


def _photo(w=320, h=240, seed=0) -> np.ndarray:
  """Smooth content (a JPEG of noise would make every comparison meaningless)."""
  y, x = np.mgrid[0:h, 0:w]
  rng = np.random.default_rng(seed)
  out = np.stack([128 + 100 * np.sin(x / (17 + 5 * c) + y / (23 + 3 * c) + rng.uniform(0, 6)) for c in range(3)], -1)
  return out.astype(np.uint8)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_crops_give_uint8_squares_of_the_requested_size(fmt):
  im = images.decode_image(encode(_photo(), fmt))
  rng = np.random.default_rng(0)
  for size in (32, 224):
    train = images.random_resized_crop(im, size, rng)
    evaluation = images.resize_center_crop(images.decode_image(encode(_photo(), fmt)), size)
    for out in (train, evaluation):
      assert out.shape == (size, size, 3) and out.dtype == np.uint8


def test_grey_palette_and_alpha_images_become_rgb():
  rgb = _photo(64, 48)
  for mode in ("L", "P", "RGBA", "LA", "CMYK"):
    buf = io.BytesIO()
    Image.fromarray(rgb).convert(mode).save(buf, "PNG" if mode != "CMYK" else "JPEG")
    out = images.resize_center_crop(images.decode_image(buf.getvalue()), 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8, mode


def test_random_resized_crop_depends_only_on_the_generator():
  im = _photo()
  a = images.random_resized_crop(im, 64, np.random.default_rng(7))
  b = images.random_resized_crop(im, 64, np.random.default_rng(7))
  c = images.random_resized_crop(im, 64, np.random.default_rng(8))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  with pytest.raises(ValueError, match="crop scale"):
    images.random_resized_crop(im, 64, np.random.default_rng(0), scale=(0.5, 1.5))


def test_center_crop_of_an_array_matches_pil_reference():
  im = _photo(100, 60)
  out = images.resize_center_crop(im, 30)
  ref = np.asarray(Image.fromarray(im[:, 20:80]).resize((30, 30), Image.BICUBIC))
  assert np.abs(out.astype(int) - ref).max() <= 1


def test_draft_mode_jpeg_decode_is_close_to_a_full_decode():
  data = encode(_photo(1024, 768), "JPEG", quality=95)
  fast = images.resize_center_crop(images.decode_image(data), 128)  # draft: DCT scaled by 1/4
  full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").crop((128, 0, 896, 768)).resize(
      (128, 128), Image.BICUBIC, reducing_gap=None))
  diff = np.abs(fast.astype(np.float32) - full)
  assert diff.mean() < 2.0 and np.percentile(diff, 99) < 12


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\xff\xd8\xff\xe0" + b"\x00" * 64])
def test_garbage_bytes_raise_corrupt_image_error(data):
  with pytest.raises(images.CorruptImageError):
    images.resize_center_crop(images.decode_image(data), 16)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_raise_corrupt_image_error(fmt):
  data = encode(_photo(), fmt)
  with pytest.raises(images.CorruptImageError):
    images.random_resized_crop(images.decode_image(data[:len(data) // 2]), 32, np.random.default_rng(0))


def test_normalisation_presets():
  x = np.array([[0, 128, 255]], np.uint8).T.repeat(3, 1)  # [3 pixels, RGB]
  for name, (mean, std) in images.NORMALIZATIONS.items():
    y = images.normalize(x, name)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, (x / 255 - np.array(mean)) / np.array(std), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(images.normalize(x, "clip")[0], [-1.7923, -1.7521, -1.4802], atol=1e-4)
  with pytest.raises(ValueError, match="'openai'.*clip"):
    images.normalize(x, "openai")
  with pytest.raises(ValueError, match="uint8"):
    images.normalize(x.astype(np.float32), "clip")
  with pytest.raises(ValueError, match=r"RGB.*\(3, 1\)"):
    images.normalize(x[:, :1], "clip")


def test_normalisation_table_gives_the_arithmetic_bit_for_bit():
  pixels = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3)).astype(np.uint8)
  for name, (mean, std) in images.NORMALIZATIONS.items():
    arithmetic = (pixels.astype(np.float32) * np.float32(1 / 255) - np.float32(mean)) / np.float32(std)
    np.testing.assert_array_equal(images.normalize(pixels, name), arithmetic)


def test_siglip_preset_is_bit_identical_to_the_shapes_pixels():
  every = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, -1)
  np.testing.assert_array_equal(images.normalize(every, "siglip"), pipeline.preprocess_images(every))
  image = shapes_pairs(1)[0]["image"]
  np.testing.assert_array_equal(images.normalize(image, "siglip"), pipeline.preprocess_images(image))


def test_simplejpeg_decoder_gives_pils_crops_where_no_reduced_scale_applies():
  """Both decoders wrap libjpeg-turbo: at full scale the crops are the same pixels. A 224 crop of a
  whole 2000x1500 JPEG decodes reduced by each (PIL in halves, simplejpeg in eighths): close, not equal."""
  jpeg = encode(_photo(320, 240), "JPEG")
  for seed in range(3):
    pil = images.random_resized_crop(images.decode_image(jpeg), 224, np.random.default_rng(seed), scale=(0.9, 1.0))
    turbo = images.random_resized_crop(images.decode_image(jpeg, "simplejpeg"), 224, np.random.default_rng(seed),
                                       scale=(0.9, 1.0))
    np.testing.assert_array_equal(pil, turbo)
  big = encode(_photo(2000, 1500), "JPEG")
  pil = images.resize_center_crop(images.decode_image(big), 224).astype(float)
  turbo = images.resize_center_crop(images.decode_image(big, "simplejpeg"), 224).astype(float)
  assert np.abs(pil - turbo).mean() < 2.0


@pytest.mark.parametrize("cut", ["garbage", "header only", "truncated"])
def test_simplejpeg_decoder_reports_garbage_and_truncation_as_corrupt(cut):
  jpeg = encode(_photo(), "JPEG")
  data = {"garbage": b"\xff\xd8\xff not a jpeg", "header only": b"\xff\xd8", "truncated": jpeg[:len(jpeg) // 2]}[cut]
  with pytest.raises(images.CorruptImageError):  # truncated: libjpeg-turbo's warning, then PIL's error
    images.resize_center_crop(images.decode_image(data, "simplejpeg"), 32)


def test_simplejpeg_decoder_leaves_other_formats_to_pil_and_unknown_decoders_are_refused():
  png = images.decode_image(encode(_photo(), "PNG"), "simplejpeg")
  assert isinstance(png, Image.Image) and images.resize_center_crop(png, 32).shape == (32, 32, 3)
  with pytest.raises(ValueError, match=r"Unknown data.jpeg_decoder 'turbo'; valid: \['pil', 'simplejpeg'\]"):
    pipeline.check_data_config(dict(name="folder", path="/nowhere.jsonl", jpeg_decoder="turbo"))
