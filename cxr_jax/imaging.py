"""Image operations that the data pipeline and the lung segmenter both use, below both (so neither
imports the other for them): the uint8 stretch, CLAHE, the square resize, and the normalisation of
stored uint8 images to a model's input (`normalise_images`, the one normalisation of training
batches, evaluation, prediction and the segmenter)."""

from __future__ import annotations

import cv2
import numpy as np


def to_uint8(pixels: np.ndarray) -> np.ndarray:
  """Stretches an integer or float image linearly from its min..max onto 0..255."""
  pixels = pixels.astype(np.float64)
  lo, hi = float(pixels.min()), float(pixels.max())
  if hi <= lo:
    return np.zeros(pixels.shape, np.uint8)
  return np.round((pixels - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def clahe(image: np.ndarray, clip_limit: float, tile_grid: int) -> np.ndarray:
  return cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tile_grid, tile_grid)).apply(image)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
  """Resizes (aspect ratio not kept) to size x size; area averaging when shrinking."""
  if image.shape == (size, size):
    return image
  shrinking = size * size < image.shape[0] * image.shape[1]
  interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
  return cv2.resize(image, (size, size), interpolation=interpolation)


def preprocessing_spec(name: str) -> dict:
  """PREPROCESSING[name] from cxr_jax.weights (scale, mean, std, channel_order)."""
  from cxr_jax.weights import PREPROCESSING  # Late: the weights package imports jax.
  if name not in PREPROCESSING:
    raise ValueError(f"Unknown preprocessing {name!r}; known: {sorted(PREPROCESSING)}.")
  return PREPROCESSING[name]


def normalise_images(images: np.ndarray, preprocessing: str) -> np.ndarray:
  """uint8 [..., H, W, 1] -> float32 [..., H, W, 3]: (x * scale - mean) / std per channel.

  The one normalisation of training batches, evaluation and prediction. NumPy, not TensorFlow, so
  that loading a model and predicting never import TensorFlow (6 s of a cold start); float32 in
  the order TensorFlow's graph did it, bit-identical for every uint8 value
  (tests/test_data.py::test_normalisation_matches_tensorflow_for_every_pixel_value).
  """
  spec = preprocessing_spec(preprocessing)
  image = np.asarray(images).astype(np.float32) * np.float32(spec["scale"])
  image = np.repeat(image, 3, axis=-1)  # Gray is the same in RGB and BGR order.
  return (image - np.asarray(spec["mean"], np.float32)) / np.asarray(spec["std"], np.float32)
