"""Inference on a trained run: `vljax.load(workdir)` -> a Predictor.

  model = vljax.load("runs/coca")
  model.caption(["cat.png"], method="beam", beam_size=4)   # -> ["a red circle ..."]
  model.zero_shot(images, ["red circle", "blue star"])      # -> (labels, probabilities)
  model.score(images, ["a red circle", "a blue star"])      # -> [N_images, N_texts]

Images are file paths or uint8 arrays ([H, W, 3] or [N, H, W, 3]); other sizes are resized
(shorter side, then a center crop) to the size the model was trained at.

runner.py holds the ModelRunner that the evaluators and the Predictor share; predict.py the
command line (`python -m vljax.predict`). Nothing here imports vljax.train: a checkpoint's params
are read by vljax/checkpoint_io.py, the model config is resolved by vljax/models/resolve.py.
"""

# The runner first: the predictor imports the evaluators' zero-shot scoring, and they import the runner.
from vljax.inference.runner import ModelRunner
from vljax.inference.images import ImageInput, load_images, read_image
from vljax.inference.predictor import Predictor, load

__all__ = ["ImageInput", "ModelRunner", "Predictor", "load", "load_images", "read_image"]
