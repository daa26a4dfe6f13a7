"""Image search: a folder of images (or the shapes world) embedded once by a trained run, then found
by a text or an image.

  python -m vljax.search index --workdir RUN --images DIR|shapes:N --index OUT \\
      [--shard_size 1000] [--batch_size 256] [--dtype float32]
  python -m vljax.search query --index OUT "a red circle left of a blue star" [-k 10] [--sheet PNG]
  python -m vljax.search query --index OUT --image QUERY.png [-k 10]

RUN: a vljax workdir whose model has contrastive image and text embeddings (CLIP, SigLIP, CoCa,
BLIP, BLIP-2); others (a language model, a captioner without a contrastive head) are refused at
start. It is read at its latest checkpoint, with the weights its evaluations scored (vljax.load);
a resumed index keeps the step it started with, and queries use the index's run and step.

--images: a directory (its image files, recursively, sorted by path; a file that does not decode
is skipped and counted) or shapes:N (scenes 0..N-1 of the run's shapes world, held-out split).
Each image is read at the run's image size as its evaluation reads it. OUT gets
manifest.json (workdir, step, source, item count, dtype, shard size; when complete also width,
count and skipped items by reason), embeddings.npy (L2-normalised, [count, width], float32 unless
--dtype float16) and ids.json (a file's absolute path, or shapes:i). It is written in shards of
--shard_size images, each renamed into place when whole: an interrupted index resumes at the first
unfinished shard, and ends byte for byte as an uninterrupted one (given the same devices and
--batch_size, which set how images are batched). An OUT holding another index is refused, naming
what differs.

A query scores every indexed image exactly (cosine; a chunk of rows at a time, so memory is that of
one chunk at any index size), prints rank, score and path of the best k, and writes a contact
sheet of them (thumbnails captioned with rank and score) to --sheet, by default OUT.sheet.png.
"""
