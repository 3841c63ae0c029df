"""Heatmap overlays of a class activation map on the preprocessed image, saved as PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def display_gray(image: np.ndarray) -> np.ndarray:
  """[H, W] in [0, 1] from a normalised [H, W, 3] model input.

  The inputs are grey levels replicated to 3 channels and normalised per channel by an affine
  map (torchvision or caffe), so a min-max rescale of one channel recovers the grey image that
  the model saw (after CLAHE and resize), whatever the normalisation.
  """
  gray = np.asarray(image, dtype=np.float32)[..., 0]
  lo, hi = float(gray.min()), float(gray.max())
  return (gray - lo) / (hi - lo) if hi > lo else np.zeros_like(gray)


def input_gray(images, preprocessing: str) -> np.ndarray:
  """uint8 [N, H, W] grey images from normalised model inputs [N, H, W, 3], as the lung segmenter
  reads them: the exact inverse of the run's normalisation (`display_gray`'s min-max rescale would
  stretch each image's contrast). Every channel holds the same grey image."""
  from cxr_jax.imaging import preprocessing_spec  # late: it imports OpenCV

  norm = preprocessing_spec(preprocessing)
  x = np.asarray(images, np.float32)[..., 0]
  return np.clip(np.round((x * norm["std"][0] + norm["mean"][0]) / norm["scale"]), 0,
                 255).astype(np.uint8)


def probs_title(probs: Sequence[float], class_names: Sequence[str]) -> str:
  return "  ".join(f"{n} {p:.2f}" for n, p in zip(class_names, probs, strict=True))


def save_overlay(path, image: np.ndarray, cam: np.ndarray, probs: Sequence[float],
                 class_names: Sequence[str], *, heading: str = "", alpha: float = 0.4) -> Path:
  """Writes the image beside image + heatmap; the title gives the class probabilities."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  gray = display_gray(image)
  fig, axes = plt.subplots(1, 2, figsize=(8, 4.4))
  axes[0].imshow(gray, cmap="gray", vmin=0, vmax=1)
  axes[1].imshow(gray, cmap="gray", vmin=0, vmax=1)
  axes[1].imshow(np.asarray(cam), cmap="jet", alpha=alpha, vmin=0, vmax=1)
  for ax in axes:
    ax.axis("off")
  fig.suptitle((heading + "\n" if heading else "") + probs_title(probs, class_names), fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
