"""Lung masks as numpy arrays: the two lungs, quality control, boxes, crops, blanking, shares, Dice.

Pure functions of boolean [H, W] masks (True = lung) and images; no model here. Sides are the
image's: `lungs[0]` is the lung on the image's left, which on a frontal film is the patient's
right lung ("Right Lung" in the annotation boxes).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # (top, left, bottom, right), pixels, bottom/right exclusive

# Quality-control limits for a predicted mask. Lung fields cover about 20-45 % of a frontal film
# resized to a square; paper figures with wide margins go lower, so the floor is generous.
MIN_AREA_SHARE = 0.05
MAX_AREA_SHARE = 0.75
# Each lung must hold this share of the mask (one lung missing or a speck otherwise) ...
MIN_LUNG_SHARE = 0.15
# ... their centroids this far apart (share of the image width), side by side ...
MIN_SEPARATION = 0.12
# ... and their row spans must overlap by this share of the shorter span.
MIN_ROW_OVERLAP = 0.5
# Fragments smaller than this share of the largest component are dropped as noise.
FRAGMENT_SHARE = 0.02


def components(mask: np.ndarray) -> list[np.ndarray]:
  """The 8-connected components of `mask`, largest first, as boolean masks."""
  mask = np.asarray(mask, bool)
  count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
  order = sorted(range(1, count), key=lambda i: -stats[i, cv2.CC_STAT_AREA])
  return [labels == i for i in order]


def _centroid_x(mask: np.ndarray) -> float:
  return float(np.nonzero(mask)[1].mean())


def split_lungs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(image-left lung, image-right lung) of a two-lung mask.

  The two largest components are the lungs, ordered by their centroids' columns; smaller
  fragments go to the lung whose centroid is nearer. With a single component (one lung, or two
  joined), it is cut at the column of its centroid when it spans both halves of the image, else it
  is the lung of its side and the other one is empty.
  """
  mask = np.asarray(mask, bool)
  parts = components(mask)
  empty = np.zeros_like(mask)
  if not parts:
    return empty, empty.copy()
  if len(parts) == 1:
    cols = np.nonzero(parts[0])[1]
    width = mask.shape[1]
    if cols.min() < width / 2 <= cols.max() and _spans_both(cols, width):
      cut = int(round(cols.mean()))
      left, right = parts[0].copy(), parts[0].copy()
      left[:, cut:] = False
      right[:, :cut] = False
      return left, right
    return (parts[0], empty) if cols.mean() < width / 2 else (empty, parts[0])
  a, b = parts[0], parts[1]
  if _centroid_x(a) > _centroid_x(b):
    a, b = b, a
  ax, bx = _centroid_x(a), _centroid_x(b)
  a, b = a.copy(), b.copy()
  for fragment in parts[2:]:
    target = a if abs(_centroid_x(fragment) - ax) <= abs(_centroid_x(fragment) - bx) else b
    target |= fragment
  return a, b


def _spans_both(cols: np.ndarray, width: int) -> bool:
  """True when a component reaches well into both halves (two lungs joined below the heart)."""
  return (cols < width * 0.4).mean() > 0.2 and (cols > width * 0.6).mean() > 0.2


def clean(mask: np.ndarray) -> np.ndarray:
  """Keeps the two largest components (and none below FRAGMENT_SHARE of the largest), holes
  filled: a predicted mask's specks and pinholes are noise, not lung."""
  parts = components(mask)
  out = np.zeros(np.shape(mask), bool)
  if not parts:
    return out
  largest = parts[0].sum()
  for part in parts[:2]:
    if part.sum() >= FRAGMENT_SHARE * largest:
      out |= _fill_holes(part)
  return out


def _fill_holes(mask: np.ndarray) -> np.ndarray:
  contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
  filled = np.zeros(mask.shape, np.uint8)
  cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
  return filled.astype(bool) | mask


@dataclasses.dataclass(frozen=True)
class Check:
  """A mask's quality verdict: `ok`, else `reason` says what is implausible."""
  ok: bool
  reason: str = ""
  area_share: float = 0.0


def check(mask: np.ndarray) -> Check:
  """Is `mask` plausibly two lungs side by side? Callers fall back to the whole image if not."""
  mask = np.asarray(mask, bool)
  if mask.ndim != 2:
    raise ValueError(f"a lung mask is [H, W], got shape {mask.shape}")
  share = float(mask.mean())
  if share == 0:
    return Check(False, "empty mask (no lung found)", share)
  if share < MIN_AREA_SHARE:
    return Check(False, f"lung area {share:.1%} of the image is implausibly small "
                        f"(< {MIN_AREA_SHARE:.0%})", share)
  if share > MAX_AREA_SHARE:
    return Check(False, f"lung area {share:.1%} of the image is implausibly large "
                        f"(> {MAX_AREA_SHARE:.0%})", share)
  left, right = split_lungs(mask)
  total = mask.sum()
  for side, lung in (("image-left", left), ("image-right", right)):
    if lung.sum() < MIN_LUNG_SHARE * total:
      return Check(False, f"one lung missing: the {side} lung holds "
                          f"{lung.sum() / total:.0%} of the mask", share)
  (lt, _, lb, _), (rt, _, rb, _) = box(left), box(right)
  if (_centroid_x(right) - _centroid_x(left)) < MIN_SEPARATION * mask.shape[1]:
    return Check(False, "the two regions are not side by side", share)
  overlap = min(lb, rb) - max(lt, rt)
  if overlap < MIN_ROW_OVERLAP * min(lb - lt, rb - rt):
    return Check(False, "the two regions are not at the same height", share)
  return Check(True, "", share)


def box(mask: np.ndarray) -> Box:
  """Bounding box (top, left, bottom, right) of the True pixels; bottom/right exclusive."""
  rows = np.nonzero(np.any(mask, axis=1))[0]
  cols = np.nonzero(np.any(mask, axis=0))[0]
  if rows.size == 0:
    raise ValueError("the mask is empty: it has no bounding box")
  return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def crop_box(mask: np.ndarray, margin: float) -> Box:
  """The mask's box grown by `margin` times its height / width on every side, kept in the image."""
  top, left, bottom, right = box(mask)
  dy, dx = round(margin * (bottom - top)), round(margin * (right - left))
  height, width = mask.shape
  return max(0, top - dy), max(0, left - dx), min(height, bottom + dy), min(width, right + dx)


def blank(image: np.ndarray, region: np.ndarray) -> np.ndarray:
  """`image` with the pixels of `region` set to the image's mean (over all its pixels), the value
  that adds the least structure; the rest untouched. image: [H, W] or [H, W, C]."""
  image = np.asarray(image)
  region = np.asarray(region, bool)
  if image.shape[:2] != region.shape:
    raise ValueError(f"image {image.shape[:2]} and mask {region.shape} differ in size")
  out = image.copy()
  mean = image.mean(axis=(0, 1))
  out[region] = np.round(mean).astype(image.dtype) if np.issubdtype(image.dtype, np.integer) \
      else mean
  return out


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
  """A boolean mask resized (nearest) to [height, width]."""
  mask = np.asarray(mask, np.uint8)
  if mask.shape == (height, width):
    return mask.astype(bool)
  return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)


def lung_share(heatmaps, masks) -> np.ndarray:
  """Share of each heatmap's positive mass on the lungs of its mask, and the chance level.

  heatmaps: [N, h, w]; masks: [N, H, W] boolean (a heatmap is resized bilinearly to its mask's
  size first). As `cxr_jax.explain.regions.lung_field_share`, negative values are left out and a
  map with no positive mass gets NaN. Returns (share [N], area share of each mask [N]): a heatmap
  spread uniformly scores its mask's area share.
  """
  maps = np.asarray(heatmaps, np.float64)
  masks = np.asarray(masks, bool)
  if maps.ndim != 3 or masks.ndim != 3 or len(maps) != len(masks):
    raise ValueError(f"need heatmaps [N, h, w] and masks [N, H, W], got {maps.shape}, "
                     f"{masks.shape}")
  shares = np.full(len(maps), np.nan)
  for i, (heatmap, mask) in enumerate(zip(maps, masks, strict=True)):
    if heatmap.shape != mask.shape:
      heatmap = cv2.resize(heatmap, mask.shape[::-1], interpolation=cv2.INTER_LINEAR)
    positive = np.maximum(heatmap, 0.0)
    total = positive.sum()
    if total > 0:
      shares[i] = positive[mask].sum() / total
  return shares, masks.mean(axis=(1, 2))


def dice(pred: np.ndarray, true: np.ndarray) -> float:
  """2|P∩T| / (|P|+|T|); 1.0 when both are empty."""
  pred, true = np.asarray(pred, bool), np.asarray(true, bool)
  total = pred.sum() + true.sum()
  return 1.0 if total == 0 else float(2 * (pred & true).sum() / total)


def iou(pred: np.ndarray, true: np.ndarray) -> float:
  """|P∩T| / |P∪T|; 1.0 when both are empty."""
  pred, true = np.asarray(pred, bool), np.asarray(true, bool)
  union = (pred | true).sum()
  return 1.0 if union == 0 else float((pred & true).sum() / union)


def box_iou(a: Box, b: Box) -> float:
  """IoU of two (top, left, bottom, right) boxes."""
  inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
  area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return float(inter / area) if area > 0 else 0.0
