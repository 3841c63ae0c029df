"""Inference shared by evaluate, explain and predict: class probabilities for batches of images."""

from __future__ import annotations

from collections.abc import Iterable

import flax.linen as nn
import jax
import numpy as np


def make_predict_fn(model: nn.Module):
  """A jitted fn(variables, images [N, H, W, 3]) -> probabilities [N, num_classes] (train=False)."""

  @jax.jit
  def predict(variables, images):
    logits = model.apply(variables, images, train=False)
    return jax.nn.softmax(logits.astype(np.float32), axis=-1)

  return predict


def predict_arrays(model: nn.Module, variables, batches: Iterable[dict], *, predict_fn=None):
  """Runs the model over `batches` (dicts with image, label, index and optionally mask).

  Returns (probs [N, C] float32, labels [N] int, ids [N] int) over the real rows, in batch order.
  Padded batches are run at full size, so there is one compilation per batch shape.
  """
  predict_fn = predict_fn or make_predict_fn(model)
  variables = {k: v for k, v in variables.items() if k not in ("perturbations", "intermediates")}
  probs, labels, ids = [], [], []
  for batch in batches:
    image = np.asarray(batch["image"])
    image = image.reshape((-1,) + image.shape[-3:])
    mask = np.asarray(batch.get("mask", np.ones(image.shape[0]))).reshape(-1) > 0
    p = np.asarray(predict_fn(variables, image))
    probs.append(p[mask])
    labels.append(np.asarray(batch["label"]).reshape(-1)[mask])
    ids.append(np.asarray(batch["index"]).reshape(-1)[mask])
  if not probs:
    raise ValueError("no batches to predict on")
  return (np.concatenate(probs).astype(np.float32), np.concatenate(labels).astype(np.int64),
          np.concatenate(ids))
