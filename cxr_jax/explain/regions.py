"""How much of a heatmap falls inside the lung fields: a fixed central box per lung.

The region is a prior, not a segmentation. On a frontal chest X-ray resized to a square, each lung
field's central part is taken as the box

  rows    0.20 .. 0.80 of the height   (below the clavicles and apices, above the diaphragm and
                                         costophrenic angles)
  columns 0.12 .. 0.44 of the width    (the lung on the image's left = the patient's right)
          0.56 .. 0.88 of the width    (the other lung)

so the mediastinum and heart border (the central columns), the neck, the abdomen, the shoulders and
the image corners, where collections put their text labels and laterality markers, lie outside.
It covers 38.4 % of the image: a heatmap spread uniformly puts that share inside, so a share is
only informative next to that baseline. Boxes are (top, left, bottom, right) fractions of the
image side; a pixel belongs to a box when its centre does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Box = tuple[float, float, float, float]
LUNG_BOXES: tuple[Box, ...] = ((0.20, 0.12, 0.80, 0.44), (0.20, 0.56, 0.80, 0.88))


def _check_boxes(boxes: Sequence[Box]) -> None:
  if not boxes:
    raise ValueError("need at least one box")
  for box in boxes:
    if len(box) != 4:
      raise ValueError(f"a box is (top, left, bottom, right), got {box!r}")
    top, left, bottom, right = box
    if not (0.0 <= top < bottom <= 1.0 and 0.0 <= left < right <= 1.0):
      raise ValueError(f"box {box!r}: need 0 <= top < bottom <= 1 and 0 <= left < right <= 1")


def lung_field_mask(height: int, width: int, boxes: Sequence[Box] = LUNG_BOXES) -> np.ndarray:
  """Boolean [height, width] mask of the pixels whose centre lies inside one of `boxes`."""
  _check_boxes(boxes)
  rows = (np.arange(height) + 0.5) / height
  cols = (np.arange(width) + 0.5) / width
  mask = np.zeros((height, width), bool)
  for top, left, bottom, right in boxes:
    mask |= (((rows >= top) & (rows < bottom))[:, None]
             & ((cols >= left) & (cols < right))[None, :])
  return mask


def lung_field_share(heatmaps, boxes: Sequence[Box] = LUNG_BOXES) -> np.ndarray:
  """Share of each heatmap's positive mass that lies inside the lung-field boxes.

  heatmaps: [H, W] or [N, H, W] (Grad-CAM maps, or LRP relevance summed over channels); negative
  values (LRP's counter-evidence) are left out, so the share is sum(max(h, 0) inside) /
  sum(max(h, 0)), in [0, 1], and unaffected by a per-image rescaling. A map with no positive mass
  gets NaN. Returns a float for one map, an array [N] for a batch.
  """
  maps = np.asarray(heatmaps, np.float64)
  if maps.ndim not in (2, 3):
    raise ValueError(f"heatmaps must be [H, W] or [N, H, W], got shape {maps.shape}")
  batch = maps if maps.ndim == 3 else maps[None]
  mask = lung_field_mask(batch.shape[1], batch.shape[2], boxes)
  positive = np.maximum(batch, 0.0)
  total = positive.sum(axis=(1, 2))
  inside = positive[:, mask].sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    share = np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)
  return share if maps.ndim == 3 else float(share[0])
