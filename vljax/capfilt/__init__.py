"""CapFilt, BLIP's dataset bootstrapping: a captioner writes synthetic captions for web images, and a
filter's image-text matching (ITM) head removes the web and synthetic captions that do not match.

  python -m vljax.capfilt --captioner RUN --filter RUN --input SOURCE --output DIR \\
      [--captions_per_image 1] [--top_p 0.9] [--temperature 1.0] [--threshold 0.5] [--seed 0] \\
      [--shard_size 1000] [--batch_size 64]

RUN: a vljax workdir, read at its latest checkpoint (a resumed job at the step it started with). The
captioner needs an image-grounded caption decoder, the filter an ITM head; one BLIP run
(configs/blip_shapes.py arm=blip) serves as both. Each sees the images as its own config preprocesses
them for evaluation (data.image_size, data.normalization, data.jpeg_decoder); the output keeps the
original encoded bytes. SOURCE: what `python -m vljax.data.convert` reads (tar shards, a folder's
.jsonl/.csv index; --image_key, --caption_key) or ArrayRecord files (its output, or CapFilt's).

For each image the captioner samples --captions_per_image captions (nucleus sampling); the filter
scores each web caption (a record may hold several) and each synthetic one, and keeps it when its
match probability is >= --threshold (an empty synthetic caption never). Caption j of record i draws
from a key folded from --seed, i and j, so it does not depend on the batch, shard or host that
processes it. DIR gets, per shard:
shard-NNNNN.array_record (one record per kept pair: {"key", "image", "caption", "provenance",
"itm_score"}, read by data.name="array_record", or as an entry of data.name="mixture" beside
human-annotated data), shard-NNNNN.jsonl (every caption: {"image", "index", "caption", "provenance":
"web" | "synthetic", "itm_score", "decision": "kept" | "removed"}) and shard-NNNNN.done.json (its
counts); and capfilt.json (the job) and summary.json (counts by provenance x decision, skipped records
by reason). Shards are written under temporary names and renamed: a restart skips the finished ones
and writes the others as the first run would have (the same bytes, given the same devices and
--batch_size: they set how images are batched, hence the last bits of the scores). Over several
processes (--coordinator_address etc., or as training detects them) process p of P writes shards p,
p + P, ...; each uses its own devices. Corrupt or missing images are skipped and counted; a DIR of
another job or with other files is refused.

The whole chain (BLIP trained on noisy scenes, CapFilt, BLIP pretrained again on each dataset at
equal compute, 3 seeds) is configs/compare/capfilt_shapes.py, with its commands and figures. The
first shapes demonstration (seed 0, one run, a 2-core CPU shared with other work; the recipe as of
commit 8858988, whose arm=blip trained plain ITC, before momentum distillation):

  python -m vljax.train --config configs/blip_shapes.py --workdir runs/capfilt_demo/blip \\
      --config.total_steps=300 --config.checkpoint.every=300             # 12 minutes
  python -m vljax.capfilt.noisy_shapes --output runs/capfilt_demo/noisy --num_images 2000 --noise 0.3
  python -m vljax.capfilt --captioner runs/capfilt_demo/blip --filter runs/capfilt_demo/blip \\
      --input runs/capfilt_demo/noisy --output runs/capfilt_demo/out --captions_per_image 2   # 50 s
  python -m vljax.capfilt.score --data runs/capfilt_demo/noisy --capfilt runs/capfilt_demo/out

After 300 steps (of the recipe's 750) the run knows colours, not shapes: zero-shot color_acc 1.00,
shape_acc 0.20, retrieval R@1 0.47 / 0.48, caption CIDEr 1.75, train/itm_acc 0.70 (0.67: "no match"
for every pair). 587 of the 2000 web captions are wrong (182 unrelated alt text, 197 another scene's,
208 with a colour or shape swapped). The filter ranks them below the right ones with ROC AUC 0.78:
alt text 0.97, another scene's 0.88, swapped colour 0.51, swapped shape 0.52. Its match
probabilities sit low (median 0.38 for web captions), so at --threshold 0.5 it removes 91% of the
wrong ones at precision 0.32 (79% of the right ones go too); at 0.2, precision 0.92, recall 0.48.
The kept web captions are right 85% of the time at 0.5 (349 kept) and 82% at 0.2 (1697 kept), from
71% in the input. The captioner's synthetic captions name the scene's colours right 85% of the
time but are correct (one of the world's wordings of the scene) 3% of the time (5% of those kept:
the filter cannot rank them, AUC 0.50); with them, the kept pairs are right 47% of the time. So at
this budget filtering helps and captioning does not: the synthetic half needs a run that has learned
shapes.

With the whole recipe (arm=blip with momentum distillation, 750 steps, 34 minutes on the shared CPU:
zero-shot 0.61, shape_acc 0.61, CIDEr 2.39, train/itm_acc 0.75) as captioner and filter, the same
data and command (32 s): web AUC 0.84 (alt text 0.99, another scene's 0.97, colour swapped 0.51,
shape swapped 0.65), precision 0.46 / recall 0.82 at 0.5, kept web captions 88.7% right (956 kept);
synthetic captions 10.0% wholly right, 97% with the right colours, 1649 kept at 10.6% right (AUC 0.58).
"""
