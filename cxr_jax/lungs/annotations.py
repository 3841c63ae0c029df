"""The lung-annotation set (`../shared/data/lung-masks`, `$CXR_LUNG_MASKS`): read, checked, split.

manifest.csv: stem, image, mask ("" = boxes only), boxes, patient_id, ...; boxes.csv: stem, lung
("Right Lung" = the patient's right = the image's left), top, left, bottom, right. Every bad
entry (missing or unreadable image or mask, a mask of another size than its image, a mask that
is not binary) is skipped with its file and reason in `Annotations.rejects`; too few usable
masks is an error that says so.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
from pathlib import Path

import cv2
import numpy as np

from cxr_jax import paths
from cxr_jax.lungs import masks as masks_lib

MANIFEST = "manifest.csv"
BOXES = "boxes.csv"
REQUIRED = ("stem", "image", "mask", "patient_id")
# The image's left lung first, as `masks.split_lungs` orders them.
SIDES = ("Right Lung", "Left Lung")
MIN_MASKS = 20


class AnnotationError(ValueError):
  """The annotation set cannot be used; the message names the file and what to do."""


@dataclasses.dataclass(frozen=True)
class Example:
  stem: str
  image_path: Path
  patient: str
  image: np.ndarray                # uint8 [H, W]
  mask: np.ndarray | None          # bool [H, W], None for box-only images
  boxes: tuple[masks_lib.Box, ...] | None  # (image-left lung, image-right lung), or None


@dataclasses.dataclass(frozen=True)
class Annotations:
  root: Path
  examples: tuple[Example, ...]
  rejects: tuple[tuple[str, str], ...]   # (file, reason)
  digest: str                            # sha256 over manifest, boxes and every used file

  def summary(self) -> dict:
    return dict(root=str(self.root), images=len(self.examples),
                masks=sum(e.mask is not None for e in self.examples),
                boxes=sum(e.boxes is not None for e in self.examples),
                patients=len({e.patient for e in self.examples}),
                rejected=len(self.rejects), rejects=[dict(file=f, reason=r)
                                                      for f, r in self.rejects])


def _read_csv(path: Path, required) -> list[dict]:
  if not path.is_file():
    raise AnnotationError(f"{path}: not found; point $CXR_LUNG_MASKS at the lung-masks folder")
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    missing = [c for c in required if c not in (reader.fieldnames or ())]
    if missing:
      raise AnnotationError(f"{path}: missing column(s) {missing}; it has {reader.fieldnames}")
    return list(reader)


def _read_boxes(root: Path) -> tuple[dict, list]:
  """{stem: (image-left box, image-right box)} for stems with both lungs' boxes; rejects."""
  path = root / BOXES
  if not path.is_file():
    return {}, []
  per_stem: dict[str, dict] = {}
  rejects = []
  for i, row in enumerate(_read_csv(path, ("stem", "lung", "top", "left", "bottom", "right"))):
    try:
      top, left, bottom, right = (int(float(row[k])) for k in ("top", "left", "bottom", "right"))
    except ValueError:
      rejects.append((f"{path}:{i + 2}", "a box coordinate is not a number"))
      continue
    if row["lung"] not in SIDES or bottom <= top or right <= left:
      rejects.append((f"{path}:{i + 2}", f"lung must be one of {SIDES} with top < bottom and "
                                         f"left < right, got {row['lung']!r} {top, left, bottom, right}"))
      continue
    per_stem.setdefault(row["stem"], {})[row["lung"]] = (top, left, bottom, right)
  return {stem: tuple(b[s] for s in SIDES) for stem, b in per_stem.items()
          if all(s in b for s in SIDES)}, rejects


def _read_gray(path: Path) -> np.ndarray:
  if not path.is_file():
    raise ValueError("file not found")
  image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
  if image is None:
    raise ValueError("not a readable image")
  return image


def _read_mask(path: Path, shape) -> np.ndarray:
  mask = _read_gray(path)
  if mask.shape != shape:
    raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                     f"{shape[1]}x{shape[0]}")
  values = np.unique(mask)
  if not set(values.tolist()) <= {0, 255} and not set(values.tolist()) <= {0, 1}:
    raise ValueError(f"mask is not binary (values {values[:6].tolist()}...; need 0 and 255)")
  if not values.max():
    raise ValueError("mask is empty")
  return mask > 0


def read(root=None, *, min_masks: int = MIN_MASKS) -> Annotations:
  """Reads and checks the annotation set at `root` (default `paths.default_lung_masks_root()`)."""
  root = Path(root) if root is not None else paths.default_lung_masks_root()
  rows = _read_csv(root / MANIFEST, REQUIRED)
  boxes, rejects = _read_boxes(root)
  digest = hashlib.sha256()
  for name in (MANIFEST, BOXES):
    if (root / name).is_file():
      digest.update((root / name).read_bytes())
  examples = []
  for row in rows:
    image_path = root / row["image"]
    try:
      image = _read_gray(image_path)
    except ValueError as e:
      rejects.append((str(image_path), str(e)))
      continue
    mask = None
    if row["mask"]:
      try:
        mask = _read_mask(root / row["mask"], image.shape)
      except ValueError as e:
        rejects.append((str(root / row["mask"]), str(e)))
      else:
        digest.update((root / row["mask"]).read_bytes())
    digest.update(image_path.read_bytes())
    examples.append(Example(row["stem"], image_path, row["patient_id"] or row["stem"], image,
                            mask, boxes.get(row["stem"])))
  usable = sum(e.mask is not None for e in examples)
  if usable < min_masks:
    raise AnnotationError(
        f"{root}: only {usable} usable lung masks (need {min_masks}); rejected: "
        + "; ".join(f"{f}: {r}" for f, r in rejects[:10]))
  return Annotations(root, tuple(examples), tuple(rejects), digest.hexdigest())


def split(examples, *, seed: int, test_fraction: float, val_fraction: float) -> dict[str, list]:
  """Patient-grouped train / val / test lists of `examples`.

  Patients are shuffled by `seed` and taken into test, then val, until each holds its fraction of
  the masked images; the rest is train. Box-only images follow their patient (they score box IoU
  in test, and are not trained on).
  """
  patients = sorted({e.patient for e in examples})
  order = np.random.default_rng(seed).permutation(len(patients))
  masked = {p: 0 for p in patients}
  for e in examples:
    masked[e.patient] += e.mask is not None
  total = sum(masked.values())
  assign, counts = {}, {"test": 0, "val": 0}
  for i in order:
    patient = patients[i]
    for name, fraction in (("test", test_fraction), ("val", val_fraction)):
      if counts[name] < fraction * total:
        assign[patient] = name
        counts[name] += masked[patient]
        break
    else:
      assign[patient] = "train"
  out = {"train": [], "val": [], "test": []}
  for e in examples:
    out[assign[e.patient]].append(e)
  return out
