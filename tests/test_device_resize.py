"""data.resize="device": the host ships crops as uint8 canvases, the train step resizes them.

What must hold: the device's resize gives the host path's pixels (within a level or two of 255:
PIL rounds its two passes to uint8 and crops at fractional positions, the device at whole pixels);
padding never leaks into a region's edge; the pipeline's batches carry canvases and boxes, skip
corrupt records as before, and resume; a train step on them gives the host path's loss; settings
that cannot work are refused by name.
"""

import jax
import numpy as np
import pytest
from absl import flags

from conftest import tiny_config, train_on_one_device
from real_data import shapes_pairs, write_array_records
from vljax.bench.input import synthetic_jpeg
from vljax.data import device_resize, images, pipeline
from vljax.data.sources import skips
from vljax.data.tokenizers import ShapesTokenizer
from vljax.train import setup

TOK = ShapesTokenizer()
if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags
  flags.FLAGS.mark_as_parsed()


def _resize(canvases, boxes, size, normalization="siglip"):
  fn = jax.jit(lambda p, b: device_resize.resize_and_normalize(p, b, size, normalization))
  return np.asarray(fn(np.stack(canvases), np.stack(boxes)))


def test_a_flat_region_stays_flat_whatever_the_padding():
  """Boxes over one color in canvases whose other pixels are noise: every output pixel is that color,
  at every scale (up and down), shape and fractional position of the box."""
  rng = np.random.default_rng(0)
  canvases, boxes, colors = [], [], []
  for top, left, bottom, right in [(0, 0, 5, 7), (0, 0, 16, 16), (0.4, 0.7, 40, 22.5), (0, 0, 48, 48),
                                   (2.5, 0, 12.2, 48)]:
    canvas = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    color = rng.integers(0, 256, 3, dtype=np.uint8)
    canvas[:int(np.ceil(bottom)), :int(np.ceil(right))] = color
    canvases.append(canvas), boxes.append(np.array([top, left, bottom, right], np.float32)), colors.append(color)
  out = _resize(canvases, boxes, 16)
  expected = images.normalize(np.stack(colors)[:, None, None, :].repeat(16, 1).repeat(16, 2))
  np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("size, canvas", [(224, 448), (64, 128)])
def test_device_resize_matches_the_host_path(size, canvas):
  """Random resized crops of 500x375 photo-like JPEGs, each through the host path (PIL bicubic) and
  the canvas + device path: mean difference under half a level of 255, 99% of values within 2 levels.
  At 64 px most crops are shrunk on the host to fit the 128 canvas first (two resamplings)."""
  rng = np.random.default_rng(1)
  host, regions, boxes = [], [], []
  for i in range(8):
    jpeg = synthetic_jpeg(rng, 500, 375)
    box = images.random_crop_box(500, 375, np.random.default_rng(i), scale=(0.08, 1.0))
    host.append(images._to_rgb_array(images.decode_image(jpeg), box, size))
    region, region_box = images.crop_for_device(images.decode_image(jpeg), box, size, canvas)
    top, left, bottom, right = region_box
    assert max(region.shape[:2]) <= canvas and 0 <= top < 1 and 0 <= left < 1
    # the region is the whole pixels the box touches
    assert region.shape[:2] == (int(np.ceil(bottom - 1e-4)), int(np.ceil(right - 1e-4)))
    regions.append(region), boxes.append(region_box)
  canvases = images.paste_canvases(regions, canvas)
  assert all(not c[r.shape[0]:].any() and not c[:, r.shape[1]:].any() for c, r in zip(canvases, regions))
  levels = np.abs(_resize(list(canvases), boxes, size) - images.normalize(np.stack(host))) * 127.5
  assert levels.mean() < 0.5, levels.mean()
  assert np.percentile(levels, 99) <= 2.0 + 1e-3, np.percentile(levels, 99)


def test_crop_for_device_decodes_large_jpegs_at_a_reduced_scale():
  """A 2000x1500 JPEG cropped whole for 224 px: decoded at 1/4 scale (500x375 >= 224), then shrunk
  to fit the 448 canvas (448x336). An 800x600 crop at (100, 100) fits as it is: PIL decodes it at 1/2
  (400x300), simplejpeg at 3/8 (the box 37.5..337.5 x 37.5..262.5: 301x226 whole pixels)."""
  jpeg = synthetic_jpeg(np.random.default_rng(2), 2000, 1500)
  quarter = {"pil": ((300, 400, 3), [0, 0, 300, 400]), "simplejpeg": ((226, 301, 3), [0.5, 0.5, 225.5, 300.5])}
  for decoder in images.JPEG_DECODERS:
    region, box = images.crop_for_device(images.decode_image(jpeg, decoder), (0, 0, 2000, 1500), 224, 448)
    assert region.shape == (336, 448, 3)
    np.testing.assert_allclose(box, [0, 0, 336, 448])
    region, box = images.crop_for_device(images.decode_image(jpeg, decoder), (100, 100, 900, 700), 224, 448)
    assert region.shape == quarter[decoder][0]
    np.testing.assert_allclose(box, quarter[decoder][1], atol=0.25)  # a 3/8 decode of 1500 rows has 563


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  """24 shapes pairs at 48 px as JPEG array_records, with a corrupt image among them."""
  samples = [dict(p) for p in shapes_pairs(24, image_size=48)]
  samples.insert(5, dict(image=b"\xff\xd8\xff not a jpeg", caption="a broken image"))
  root = tmp_path_factory.mktemp("device_resize")
  write_array_records(root, samples, records_per_file=10, fmt="JPEG")
  return str(root)


def _data(path, **kw):
  return dict(tiny_config().data.to_dict(), name="array_record", path=path, image_size=32, num_threads=1,
              prefetch=2, **kw)


def test_pipeline_batches_carry_canvases_boxes_and_skip_counts(records):
  cfg = _data(records, resize="device")
  it = iter(pipeline.make_train_dataset(cfg, TOK, global_batch_size=8, seed=0))
  batches = [next(it) for _ in range(4)]
  state = it.get_state()
  after = next(it)
  it.close()
  for b in batches:
    assert b["image"].dtype == np.uint8 and b["image"].shape == (8, 96, 96, 3)  # default_canvas(32)
    boxes = b[images.BOX_KEY]
    assert boxes.dtype == np.float32 and boxes.shape == (8, 4)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, :2] < 1).all() and (boxes[:, 2:] <= 96).all()
    assert (boxes[:, 2:] - boxes[:, :2] >= 32 * 0.9 - 1e-3).all()  # crops of >= 0.9 of 48 px, drafted >= 32
  # 32 examples read of an epoch of 25 records: the corrupt one read at least once, counted, not a crash
  assert skips.counts_dict(np.sum([b[pipeline.SKIPPED_KEY] for b in batches], axis=0))["corrupt_image"] >= 1
  resumed = iter(pipeline.make_train_dataset(cfg, TOK, global_batch_size=8, seed=0))
  resumed.set_state(state)
  again = next(resumed)
  resumed.close()
  for key in after:
    np.testing.assert_array_equal(after[key], again[key])
  # Evaluation batches stay resized on the host.
  eval_batch = next(iter(pipeline.make_eval_dataset(cfg, TOK, global_batch_size=8)))
  assert eval_batch["image"].dtype == np.float32 and images.BOX_KEY not in eval_batch


def test_worker_processes_give_the_same_examples(records):
  """With grain's worker processes the collate writes the canvases into shared memory. Workers change
  which examples share a batch, not an example: the same caption has the same canvas and box."""
  seen = {}
  for workers in (0, 2):
    it = iter(pipeline.make_train_dataset(_data(records, resize="device", workers=workers), TOK, global_batch_size=8,
                                          seed=0))
    rows = {}
    for _ in range(2):  # 16 of the first epoch's 24 examples: no caption twice
      batch = next(it)
      for text, image, box in zip(batch["text"], batch["image"], batch[images.BOX_KEY]):
        rows[text.tobytes()] = (np.array(image), np.array(box))
    it.close()
    seen[workers] = rows
  common = sorted(set(seen[0]) & set(seen[2]))
  assert len(common) >= 8
  for key in common:
    np.testing.assert_array_equal(seen[0][key][0], seen[2][key][0])
    np.testing.assert_array_equal(seen[0][key][1], seen[2][key][1])


@pytest.mark.slow
@pytest.mark.cross_path
def test_a_train_step_on_device_resized_batches_gives_the_host_paths_loss(records):
  """The same examples and crops (one random stream draws both paths' boxes), one step each: the
  losses agree to the pixel differences' order (a few 1e-3 of a ~2.8 loss)."""
  losses = {}
  for mode in ("host", "device"):
    cfg = tiny_config(evals={}, batch_size=8)
    cfg.data = _data(records, resize=mode)
    cfg.schedule.name = "constant"
    parts = setup.build(cfg)
    local = next(iter(pipeline.make_train_dataset(cfg.data, TOK, global_batch_size=8, seed=0)))
    local.pop(pipeline.SKIPPED_KEY)  # the trainer counts these; the step never sees them
    losses[mode] = float(train_on_one_device(cfg, parts, local, steps=1)[0]["loss"])
  assert np.isfinite(losses["device"])
  assert abs(losses["device"] - losses["host"]) < 0.02, losses


@pytest.mark.parametrize("change, message", [
    (dict(resize="gpu"), "data.resize='gpu' is unknown; valid: ['host', 'device']"),
    (dict(resize="device", canvas_size=16), "data.canvas_size=16 must be at least data.image_size=32"),
    (dict(resize="device", name="shapes"), "data.resize='device' is for real sources"),
    (dict(resize="device", format="vlm"), "data.resize='device' supports data.format in"),
])
def test_settings_that_cannot_work_are_refused_by_name(records, change, message):
  cfg = dict(_data(records), **change)
  with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
    pipeline.check_data_config(cfg)
