"""Intensity standardisation of uint8 grayscale images: histogram equalisation, or matching to
one fixed reference histogram (config.data.intensity), optionally from the lung pixels only.

Public COVID collections differ in contrast and exposure, which a model can learn in place of
the disease; mapping every image onto one grey-level distribution removes most of that cue.
Pure numpy (a 256-entry lookup table per image), so the build stays fast and reproducible.
"""

from __future__ import annotations

import numpy as np

# Bump when `standardise` gives other output for the same input (part of the build hash).
VERSION = 1

LEVELS = 256
METHODS = ("none", "equalize", "match")  # config.data.intensity

# The reference grey-level distribution (`match`): a mixture of two normals over the grey range
# 0..1 (weight, mean, sd) plus a uniform floor. Dark mode: the aerated lung fields; bright mode:
# mediastinum, diaphragm, bone and soft tissue; round numbers resembling the pooled histogram of
# typical frontal radiographs. The floor gives every level mass, so the mapping is defined and
# monotone on all 256 levels. Fixed in code, not computed from the data: builds are reproducible
# and no split's pixels shape another's. Part of the build hash when data.intensity="match".
REFERENCE_SHAPE = dict(dark=(0.35, 0.38, 0.13), bright=(0.60, 0.64, 0.14), floor=0.05)


def _reference_cdf(shape: dict) -> np.ndarray:
  x = (np.arange(LEVELS) + 0.5) / LEVELS
  pdf = np.full(LEVELS, shape["floor"])
  for weight, mean, sd in (shape["dark"], shape["bright"]):
    pdf += weight * np.exp(-0.5 * ((x - mean) / sd) ** 2) / sd
  c = np.cumsum(pdf)
  return c / c[-1]


REFERENCE = _reference_cdf(REFERENCE_SHAPE)  # float64 [256] CDF, REFERENCE[-1] == 1


def cdf(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
  """Cumulative share of pixels at or below each grey level, float64 [256]; from the pixels
  under `mask` only when given (it must select some)."""
  if image.dtype != np.uint8:
    raise ValueError(f"intensity standardisation works on uint8 images, got {image.dtype}")
  pixels = (image if mask is None else image[np.asarray(mask, bool)]).reshape(-1)
  if not pixels.size:
    raise ValueError("the mask selects no pixels: no histogram to standardise from")
  return np.cumsum(np.bincount(pixels, minlength=LEVELS)) / pixels.size


def _apply(image: np.ndarray, lut: np.ndarray) -> np.ndarray:
  return np.clip(np.round(lut), 0, LEVELS - 1).astype(np.uint8)[image]


def equalize(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
  """Histogram equalisation (OpenCV's formula): the darkest level present maps to 0, the others
  to 255 x their CDF above it, so the (masked) pixels spread evenly over the whole range."""
  c = cdf(image, mask)
  low = c[np.flatnonzero(c)[0]]  # share of the darkest level present
  if low >= 1.0:  # one grey level: nothing to spread
    return image.copy()
  return _apply(image, (LEVELS - 1) * (c - low) / (1.0 - low))


def match(image: np.ndarray, reference_cdf: np.ndarray, mask: np.ndarray | None = None
          ) -> np.ndarray:
  """Maps each grey level to the reference level of the same CDF value, linearly interpolated
  between the reference's levels that hold mass, then rounded: skimage.exposure.match_histograms
  (rounded to uint8) when the reference CDF is that of its reference image and mask is None."""
  reference_cdf = np.asarray(reference_cdf, np.float64)
  present = np.flatnonzero(np.diff(reference_cdf, prepend=0.0) > 0)
  return _apply(image, np.interp(cdf(image, mask), reference_cdf[present], present))


def check(method: str) -> str:
  """`method` if it is a known config.data.intensity, else a ValueError naming the field."""
  if method not in METHODS:
    raise ValueError(f"data.intensity must be one of {', '.join(METHODS)}; got {method!r}")
  return method


def standardise(image: np.ndarray, method: str, mask: np.ndarray | None = None) -> np.ndarray:
  """2-D uint8 image -> the same shape, standardised by `method` (config.data.intensity); the
  mapping comes from the pixels under `mask` when given and is applied to the whole image."""
  if check(method) == "equalize":
    return equalize(image, mask)
  if method == "match":
    return match(image, REFERENCE, mask)
  return image
