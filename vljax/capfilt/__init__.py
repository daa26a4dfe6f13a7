"""CapFilt, BLIP's dataset bootstrapping: a captioner writes synthetic captions for web images, a
filter's image-text matching head removes the web and synthetic captions that do not match.

  python -m vljax.capfilt --captioner RUN --filter RUN --input SOURCE --output DIR \
      [--captions_per_image 1] [--top_p 0.9] [--threshold 0.5] [--batch_size 64] [--seed 0]
"""
