"""Inference shared by train, evaluate, explain and predict: the one forward pass at inference
(`logits`), class probabilities and pooled features for batches of images."""

from __future__ import annotations

from collections.abc import Iterable

import flax.linen as nn
import jax
import numpy as np

# Variable collections that explanation adds (zero perturbations, sown activations): never inputs
# of a prediction.
EXPLANATION_COLLECTIONS = ("perturbations", "intermediates")


def inference_variables(variables: dict) -> dict:
  """`variables` without the explanation collections: what every inference applies."""
  return {k: v for k, v in variables.items() if k not in EXPLANATION_COLLECTIONS}


def logits(model: nn.Module, variables, images):
  """The model's outputs at inference (train=False): the forward pass every predict function of
  the package wraps (the trainer's eval step, `make_predict_fn`)."""
  return model.apply(variables, images, train=False)


def make_predict_fn(model: nn.Module):
  """A jitted fn(variables, images [N, H, W, 3]) -> probabilities [N, num_classes] (train=False)."""

  @jax.jit
  def predict(variables, images):
    return jax.nn.softmax(logits(model, variables, images).astype(np.float32), axis=-1)

  return predict


def last_stage(model) -> str:
  """The backbone's last block (VGG block5, DenseNet stage5): what the head reads."""
  from cxr_jax.models.densenet import STAGE_NAMES
  from cxr_jax.models.vgg import BLOCK_NAMES

  names = STAGE_NAMES if type(model).__name__.startswith("DenseNet") else BLOCK_NAMES
  return names[-1]


def make_feature_fn(model: nn.Module):
  """A jitted fn(variables, images) -> [N, C] float32: the last block's output, averaged over
  space (the representation every head starts from, whatever its kind)."""
  stop = last_stage(model)

  @jax.jit
  def features(variables, images):
    x = model.apply(variables, images, train=False, stop=stop)
    return jax.numpy.mean(x.astype(np.float32), axis=(1, 2))

  return features


def run_batches(fn, batches: Iterable[dict], *, per_device: bool = False):
  """fn's outputs over the real rows of `batches` (dicts with image, label, index, optional mask).

  `fn(images)` gets the batch's images flattened to [B, H, W, C], or as laid out per device
  ([D, B/D, H, W, C], for pmapped functions) with per_device=True; its output's leading axes match.
  Returns (outputs [N, ...], labels [N] int, ids [N] int), padding dropped, in batch order. Padded
  batches run at full size, so there is one compilation per batch shape.
  """
  outputs, labels, ids = [], [], []
  for batch in batches:
    image = np.asarray(batch["image"])
    out = np.asarray(fn(image if per_device else image.reshape((-1,) + image.shape[-3:])))
    out = out.reshape((-1,) + out.shape[2 if per_device else 1:])
    mask = np.asarray(batch.get("mask", np.ones(out.shape[0]))).reshape(-1) > 0
    outputs.append(out[mask])
    labels.append(np.asarray(batch["label"]).reshape(-1)[mask])
    ids.append(np.asarray(batch["index"]).reshape(-1)[mask])
  if not outputs:
    raise ValueError("no batches to predict on")
  return np.concatenate(outputs), np.concatenate(labels).astype(np.int64), np.concatenate(ids)


def predict_arrays(model: nn.Module, variables, batches: Iterable[dict], *, predict_fn=None):
  """Class probabilities of the model over `batches`: (probs [N, C] float32, labels [N], ids [N])
  over the real rows, in batch order (see `run_batches`)."""
  predict_fn = predict_fn or make_predict_fn(model)
  variables = inference_variables(variables)
  probs, labels, ids = run_batches(lambda images: predict_fn(variables, images), batches)
  return probs.astype(np.float32), labels, ids
