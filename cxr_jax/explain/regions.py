"""How much of a heatmap falls inside the lung fields: a fixed central box per lung (the prior),
or the lung segmenter's predicted mask of each image (`heatmap_lung_shares`).

The box region is a prior, not a segmentation. On a frontal chest X-ray resized to a square, each lung
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

from cxr_jax.lungs import masks as masks_lib

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


def heatmap_lung_shares(heatmaps, masks, ids=None) -> dict:
  """Share of each heatmap's positive mass on its image's lung mask, beside chance (the mask's
  area share: what a heatmap spread uniformly scores).

  heatmaps [N, h, w]; masks [N, H, W] boolean. `cxr_jax.lungs.masks.lung_share` does the math and
  is the one place where a heatmap of another size is resized (bilinearly, to its mask's size).
  Returns the summary (`summarize_lung_shares`) and per_image [dict(id, share, chance)], share
  None for a map with no positive mass.
  """
  ids = range(len(heatmaps)) if ids is None else ids
  if len(heatmaps) == 0:  # lung_share wants [N, h, w]; a batch can hold no usable image
    return dict(summarize_lung_shares([]), per_image=[])
  share, chance = masks_lib.lung_share(heatmaps, masks)
  per_image = [dict(id=int(i), share=None if np.isnan(s) else float(s), chance=float(c))
               for i, s, c in zip(ids, share, chance, strict=True)]
  return dict(summarize_lung_shares(per_image), per_image=per_image)


def summarize_lung_shares(per_image) -> dict:
  """Means over the images whose map has positive mass (the others are counted, not averaged);
  the chance is averaged over the same images, so share - chance compares like with like.
  Means are None when no image counts."""
  scored = [p for p in per_image if p["share"] is not None]
  mean_share = float(np.mean([p["share"] for p in scored])) if scored else None
  mean_chance = float(np.mean([p["chance"] for p in scored])) if scored else None
  return dict(images=len(scored), no_positive_mass=len(per_image) - len(scored),
              mean_share=mean_share, mean_chance=mean_chance,
              share_minus_chance=None if not scored else mean_share - mean_chance)


def box_prior_shares(heatmaps, ids=None, boxes: Sequence[Box] = LUNG_BOXES) -> dict:
  """`heatmap_lung_shares` with the fixed boxes as every image's mask (chance: the boxes' area)."""
  maps = np.asarray(heatmaps)
  if maps.ndim != 3:
    raise ValueError(f"heatmaps must be [N, H, W], got shape {maps.shape}")
  mask = lung_field_mask(maps.shape[1], maps.shape[2], boxes)
  return heatmap_lung_shares(maps, np.broadcast_to(mask, maps.shape), ids)


def found_lung_shares(heatmaps, found, ids, files) -> dict:
  """`heatmap_lung_shares` over the images whose predicted mask passed its quality check.

  found: a `cxr_jax.lungs.segment.Found` per heatmap. A failed check leaves an all-False mask,
  which would score share 0 at chance 0; such images are left out and listed in qc_failed (id,
  file, reason) instead.
  """
  ok = np.array([f.check.ok for f in found], bool)
  maps = np.asarray(heatmaps)[ok]
  masks = np.array([f.mask for f, keep in zip(found, ok, strict=True) if keep], bool)
  result = heatmap_lung_shares(maps, masks, np.asarray(ids)[ok])
  result["qc_failed"] = [dict(id=int(i), file=str(name), reason=f.check.reason)
                         for i, name, f in zip(ids, files, found, strict=True) if not f.check.ok]
  return result
