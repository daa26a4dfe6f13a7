"""The vocabulary in which a model declares what it can do and what it takes.

Every model class declares, in its own file:
- `capabilities`: what evaluators and inference may ask of it (the names below);
- `inputs`: the batch fields its training pass reads ("image", "text");
- `rng_streams`: the named random streams its training pass draws from ("dropout", "mask");
- `output_names`: every output its training pass can give, which objectives read; a model whose
  outputs depend on its settings defines `training_outputs()` (this instance's) and
  `output_settings` (output -> the setting that adds it).
Setup, the evaluators, inference and GradCache ask these; none of them lists model names.
"""

from __future__ import annotations

EMBEDDINGS = "embeddings"
LIKELIHOOD = "likelihood"
GENERATION = "generation"
PROMPTED = "prompted_generation"
MULTI_IMAGE = "multi_image_prompts"
# An image tower `img` (vljax.models.vit.ViT) whose pooled output, before any head, frozen-encoder
# probes read (vljax.inference.runner.ModelRunner.image_features).
IMAGE_FEATURES = "image_features"
# An image-grounded text encoder with a match head (BLIP's ITM): `fusion_memory` from an image,
# `itm_logits(memory, ids)` per pair (vljax.inference.runner.ModelRunner.pair_itm_logits).
MATCHING = "matching"

DESCRIPTIONS = {
    EMBEDDINGS: "contrastive embeddings",
    LIKELIHOOD: "caption log-likelihood given an image",
    GENERATION: "caption generation from an image",
    PROMPTED: "generation continuing an <image> prompt",
    MULTI_IMAGE: "prompts with several images (few-shot)",
    IMAGE_FEATURES: "an image tower's pooled features",
    MATCHING: "an image-text matching (ITM) head",
}

# What each image-text scoring method asks of a model ("auto": either; embeddings where it has them).
SCORING_NEEDS = {"embedding": (EMBEDDINGS,), "likelihood": (LIKELIHOOD,), "auto": (EMBEDDINGS, LIKELIHOOD)}


def of(model) -> frozenset[str]:
  """The capabilities a model instance or class declares (a class: those of any of its configurations;
  an instance whose capabilities follow its config says which through `active_capabilities()`)."""
  if not isinstance(model, type) and hasattr(model, "active_capabilities"):
    return model.active_capabilities()
  return frozenset(getattr(model, "capabilities", ()))


def training_outputs(model) -> frozenset[str]:
  """The outputs of this model instance's training pass."""
  if hasattr(model, "training_outputs"):
    return model.training_outputs()
  return frozenset(model.output_names)


def describe(caps) -> str:
  return ", ".join(DESCRIPTIONS[c] for c in sorted(caps)) or "none of the evaluator capabilities"
