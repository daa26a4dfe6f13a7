"""`python -m vljax.predict`: the inference command line, vljax/inference/predict.py."""

import sys

from vljax.inference.predict import main, parse_args  # noqa: F401

if __name__ == "__main__":
  sys.exit(main())
