"""Input pipeline throughput: JPEG decode + random resized crop + normalise + tokenise through grain.

  python -m vljax.bench.input [--image_size 224 --workers 2 --batch_size 64 --batches 20 --sources ...
                               --resize host,device --demand 3300]

Writes `--num_images` synthetic JPEGs of COCO / LAION size (500x375, smooth shapes over a
gradient with sensor-like noise, quality 90) to a temporary directory in each format a run can
read (array_record, webdataset tar shards, a JSONL folder), then times `--batches` training
batches of each through `vljax.data.pipeline.make_train_dataset` after `--warmup` batches, for
each data.resize mode ("host": crops resized and normalised on the host; "device": crops shipped
as uint8 canvases, resized in the train step). "1 process" rows are the per-image work without
grain, the per-core ceiling, and the stages alone (ms per image; simplejpeg's decoder where it is
installed). Cores for `--demand` images/s come from the CPU seconds an image took, summed over every
process of the pipeline: 3,300 images/s is clip_vit_b16.py on one H100 at 40% MFU (README).
Prints a markdown table, then the same numbers as one line `json: {...}`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tarfile
import tempfile
import time

import numpy as np
import psutil
from PIL import Image, ImageDraw

from vljax.config import CROP_SCALE
from vljax.data import device_resize, images, pipeline, shapes, tokenizers
from vljax.data.sources import records

SOURCES = ("array_record", "webdataset", "folder")
RESIZE_MODES = device_resize.RESIZE_MODES
# Images/s clip_vit_b16.py consumes on one H100 at 40% MFU: 120 GFLOPs an example (3x the forward),
# 989 TFLOP/s bf16 peak (README "Real data input").
DEMAND = 3300.0


def machine() -> str:
  """The CPU model (from /proc/cpuinfo where there is one) and core count."""
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
  except OSError:
    pass
  return f"{model}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"


def synthetic_jpeg(rng: np.random.Generator, width: int, height: int, quality: int = 90) -> bytes:
  """A photo-like JPEG: gradient background, a few filled shapes, mild noise (not pure noise,
  which no camera produces and which decodes slower than photos)."""
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
  t = (x / width * rng.uniform(0.3, 1) + y / height * rng.uniform(0.3, 1))[..., None] / 2
  im = Image.fromarray((c0 * (1 - t) + c1 * t).astype(np.uint8))
  draw = ImageDraw.Draw(im)
  for _ in range(int(rng.integers(3, 8))):
    x0, y0 = rng.integers(0, width), rng.integers(0, height)
    box = [int(x0), int(y0), int(x0 + rng.integers(20, width // 2)), int(y0 + rng.integers(20, height // 2))]
    fill = tuple(int(v) for v in rng.integers(0, 256, 3))
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
  pixels = np.asarray(im, np.float32) + rng.normal(0, 6, (height, width, 3))
  buf = io.BytesIO()
  Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
  return buf.getvalue()


def write_datasets(directory: str, num_images: int, width: int, height: int, seed: int = 0) -> dict[str, str]:
  """The same samples as array_record files, tar shards and a JSONL folder; data.path of each."""
  rng = np.random.default_rng(seed)
  words = [w for w in shapes.VOCAB if w.isalpha()]
  samples = [(f"{i:08d}", synthetic_jpeg(rng, width, height), " ".join(rng.choice(words, 12)))
             for i in range(num_images)]
  records.write_records(os.path.join(directory, "records"),
                        [{"key": k, "image": im, "caption": c} for k, im, c in samples], records_per_file=256)
  os.makedirs(os.path.join(directory, "shards"))
  os.makedirs(os.path.join(directory, "folder", "images"))
  per_shard = 128
  for s in range(0, num_images, per_shard):
    with tarfile.open(os.path.join(directory, "shards", f"{s // per_shard:05d}.tar"), "w") as tar:
      for key, image, caption in samples[s:s + per_shard]:
        for name, data in ((f"{key}.jpg", image), (f"{key}.txt", caption.encode())):
          info = tarfile.TarInfo(name)
          info.size = len(data)
          tar.addfile(info, io.BytesIO(data))
  with open(os.path.join(directory, "folder", "captions.jsonl"), "w") as index:
    for key, image, caption in samples:
      with open(os.path.join(directory, "folder", "images", f"{key}.jpg"), "wb") as f:
        f.write(image)
      index.write(json.dumps({"image": f"images/{key}.jpg", "caption": caption}) + "\n")
  return {"array_record": os.path.join(directory, "records"), "webdataset": os.path.join(directory, "shards"),
          "folder": os.path.join(directory, "folder", "captions.jsonl")}


def cpu_seconds() -> float:
  """User + system CPU seconds of this process and its children (grain's workers) so far."""
  procs = [psutil.Process()]
  procs += procs[0].children(recursive=True)
  total = 0.0
  for proc in procs:
    try:
      times = proc.cpu_times()
      total += times.user + times.system
    except psutil.NoSuchProcess:
      pass
  return total


def wait_until_idle(interval: float = 0.25, longest: float = 20.0) -> None:
  """Until this process and its children use under 10% of a core (or `longest` seconds passed)."""
  deadline = time.perf_counter() + longest
  last = cpu_seconds()
  while time.perf_counter() < deadline:
    time.sleep(interval)
    now = cpu_seconds()
    if now - last < 0.1 * interval:
      return
    last = now


def decode_only(paths: dict[str, str], image_size: int, batch_size: int, num: int, resize: str = "host",
                jpeg_decoder: str = "pil") -> tuple[float, float]:
  """(images/s, CPU seconds an image) of decode + crop (+ resize + normalise on the host) + tokenise in
  this process, no grain."""
  source = records.ArrayRecordSource(paths["array_record"])
  tok = tokenizers.get_tokenizer("shapes")
  rng = np.random.default_rng(0)
  start, cpu = time.perf_counter(), cpu_seconds()
  for b in range(0, num, batch_size):
    raws = [source[i % len(source)] for i in range(b, b + batch_size)]
    ims = [images.decode_image(r["image"], jpeg_decoder) for r in raws]
    if resize == "device":
      canvas = device_resize.default_canvas(image_size)
      images.paste_canvases([images.crop_for_device(im, images.random_crop_box(*im.size, rng, CROP_SCALE), image_size,
                                                    canvas)[0] for im in ims], canvas)
    else:
      crops = [images.random_resized_crop(im, image_size, rng, scale=CROP_SCALE) for im in ims]
      images.normalize(np.stack(crops), "siglip")
    tok.encode([r["caption"] for r in raws], 24)
  return num / (time.perf_counter() - start), (cpu_seconds() - cpu) / num


def stage_times(paths: dict[str, str], image_size: int, num: int = 128) -> dict[str, float | None]:
  """Milliseconds per image of each host stage alone (CPU time, one process); None: not installed."""
  source = records.ArrayRecordSource(paths["array_record"])
  jpegs = [source[i % len(source)]["image"] for i in range(num)]

  def per_image(fn) -> float:
    fn(jpegs[0])
    start = time.process_time()
    for jpeg in jpegs:
      fn(jpeg)
    return (time.process_time() - start) / num * 1e3

  decoded = images.decode_image(jpegs[0]).convert("RGB")
  box = images.center_box(*decoded.size)  # the central square: for 224 px of 500x375, no reduced-scale decode
  crop = np.asarray(decoded.resize((image_size, image_size), Image.BICUBIC, box=box))
  out = {"decode (PIL)": per_image(lambda j: images.decode_image(j).load()),
         "decode (simplejpeg)": None,
         "bicubic crop-resize (PIL)": per_image(lambda j: decoded.resize((image_size, image_size), Image.BICUBIC,
                                                                        box=box)),
         "normalise (host)": per_image(lambda j: images.normalize(crop, "siglip")),
         "crop for the device": per_image(lambda j: images.crop_for_device(decoded, box, image_size,
                                                                           device_resize.default_canvas(image_size)))}
  try:
    import simplejpeg
    out["decode (simplejpeg)"] = per_image(lambda j: simplejpeg.decode_jpeg(j, "RGB"))
  except ImportError:
    pass
  return out


def time_pipeline(source: str, path: str, args, resize: str = "host", jpeg_decoder: str = "pil") -> tuple[float, float]:
  """(images/s, CPU seconds an image over every process) of training batches from `source` after
  `args.warmup` batches (workers started). The rate is `args.batches` batches read as they come; the
  CPU time is that of refilling the read-ahead buffers after as many more: from buffers full (the
  processes idle) to full again, so what the buffers hold is never counted as work done."""
  cfg = dict(name=source, path=path, image_size=args.image_size, workers=args.workers, num_threads=args.threads,
             prefetch=4, max_len=24, normalization="clip", resize=resize, jpeg_decoder=jpeg_decoder)
  side = device_resize.default_canvas(args.image_size) if resize == "device" else args.image_size
  it = iter(pipeline.make_train_dataset(cfg, tokenizers.get_tokenizer("shapes"), global_batch_size=args.batch_size,
                                        seed=0))
  try:
    for _ in range(args.warmup):
      next(it)
    start = time.perf_counter()
    for _ in range(args.batches):
      batch = next(it)
    seconds = time.perf_counter() - start
    assert batch["image"].shape == (args.batch_size, side, side, 3)
    wait_until_idle()
    cpu = cpu_seconds()
    for _ in range(args.batches):
      next(it)
    wait_until_idle()
    cpu = cpu_seconds() - cpu
  finally:
    if hasattr(it, "close"):
      it.close()
  num = args.batches * args.batch_size
  return num / seconds, cpu / num


def _installed_decoders() -> list[str]:
  out = []
  for decoder in images.JPEG_DECODERS:
    try:
      images.check_jpeg_decoder(decoder)
      out.append(decoder)
    except ValueError:
      pass
  return out


def _choices(parser, flag: str, value: str, valid: tuple[str, ...]) -> list[str]:
  chosen = [s.strip() for s in value.split(",") if s.strip()]
  bad = sorted(set(chosen) - set(valid))
  if bad or not chosen:
    parser.error(f"{flag}: unknown {bad or value!r}; valid: {list(valid)}")
  return chosen


def _row(path: str, images_per_sec: float, cpu_per_image: float, demand: float) -> dict:
  """A table row; cores for `demand` images/s from the CPU time an image took (every process of the
  pipeline, whatever else the machine ran meanwhile)."""
  return {"path": path, "images_per_sec": images_per_sec, "cpu_ms_per_image": cpu_per_image * 1e3,
          "cores_for_demand": demand * cpu_per_image}


def _print(result: dict, args) -> None:
  print(f"machine: {result['machine']}")
  print(f"{args.width}x{args.height} JPEG -> {args.image_size}px random resized crop, normalise, tokenise; "
        f"batch {args.batch_size}, {args.batches} timed batches")
  print(f"| path | images/s | CPU ms an image | cores for {args.demand:.0f} images/s |\n|---|---|---|---|")
  for row in result["rows"]:
    print(f"| {row['path']} | {row['images_per_sec']:.0f} | {row['cpu_ms_per_image']:.2f} | "
          f"{row['cores_for_demand']:.1f} |")
  print("\n| host stage (1 process) | ms per image |\n|---|---|")
  for stage, ms in result["stage_ms_per_image"].items():
    print(f"| {stage} | {'not installed' if ms is None else f'{ms:.2f}'} |")
  print("json: " + json.dumps(result))


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--workers", type=int, default=2, help="grain worker processes (data.workers)")
  parser.add_argument("--threads", type=int, default=2, help="read threads per worker (data.num_threads)")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--batches", type=int, default=20, help="timed batches per source")
  parser.add_argument("--warmup", type=int, default=3, help="untimed batches first (worker start-up)")
  parser.add_argument("--num_images", type=int, default=512, help="distinct JPEGs written")
  parser.add_argument("--width", type=int, default=500)
  parser.add_argument("--height", type=int, default=375)
  parser.add_argument("--sources", default=",".join(SOURCES), help=f"comma-separated, of {list(SOURCES)}")
  parser.add_argument("--resize", default="host,device", help=f"comma-separated data.resize modes, of {list(RESIZE_MODES)}")
  parser.add_argument("--jpeg_decoders", default=",".join(_installed_decoders()),
                      help=f"comma-separated data.jpeg_decoder values, of {list(images.JPEG_DECODERS)}")
  parser.add_argument("--demand", type=float, default=DEMAND, help="images/s one accelerator consumes (cores column)")
  parser.add_argument("--json_out", default=None, help="also write the JSON result to this file")
  args = parser.parse_args(argv)
  chosen = _choices(parser, "--sources", args.sources, SOURCES)
  modes = _choices(parser, "--resize", args.resize, RESIZE_MODES)
  decoders = _choices(parser, "--jpeg_decoders", args.jpeg_decoders, images.JPEG_DECODERS)
  try:
    for decoder in decoders:
      images.check_jpeg_decoder(decoder)
  except ValueError as e:
    parser.error(str(e))
  from absl import flags  # grain reads absl flags; this command line is argparse's

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  rows = []
  with tempfile.TemporaryDirectory(prefix="vljax-bench-input-") as tmp:
    start = time.perf_counter()
    paths = write_datasets(tmp, args.num_images, args.width, args.height)
    print(f"wrote {args.num_images} JPEGs of {args.width}x{args.height} in {time.perf_counter() - start:.1f}s",
          file=sys.stderr)
    stages = stage_times(paths, args.image_size)
    num = max(args.batch_size, args.batches * args.batch_size // 4)
    for mode in modes:
      for decoder in decoders:
        name = f"resize on {mode}, {decoder}"
        rows.append(_row(f"{name}: 1 process, no grain",
                         *decode_only(paths, args.image_size, args.batch_size, num, mode, decoder), args.demand))
        for source in chosen:
          rows.append(_row(f"{name}: {source}, {args.workers} workers",
                           *time_pipeline(source, paths[source], args, mode, decoder), args.demand))
  result = {"machine": machine(), "image_size": args.image_size, "source_size": [args.width, args.height],
            "batch_size": args.batch_size, "workers": args.workers, "threads": args.threads,
            "batches": args.batches, "demand": args.demand, "rows": rows, "stage_ms_per_image": stages}
  _print(result, args)
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main()
