"""A stored lung segmenter applied to any frontal chest X-ray: masks, quality control, fallbacks.

  seg = segment.load_or_train()           # the default recipe's model; trains it (minutes) once
  masks = seg.masks([gray1, gray2])       # bool masks at each image's own size, cleaned
  found = seg.lungs(gray, name=path)      # Found(mask, check): check.ok False -> use the whole image
"""

from __future__ import annotations

import dataclasses
import logging
import threading

import cv2
import jax
import numpy as np

from cxr_jax.lungs import annotations as annotations_lib
from cxr_jax.lungs import masks as masks_lib
from cxr_jax.lungs import store, train, unet
from cxr_jax.lungs.recipe import Recipe

BATCH = 8


@dataclasses.dataclass(frozen=True)
class Found:
  mask: np.ndarray          # bool [H, W] at the image's size (all False when check fails)
  check: masks_lib.Check


class Segmenter:
  def __init__(self, params, recipe: Recipe, preprocessing: str, version: str, meta=None):
    self.params, self.recipe = params, recipe
    self.preprocessing, self.version, self.meta = preprocessing, version, meta or {}
    model = unet.create(recipe)
    self._predict = jax.jit(lambda p, x: model.apply({"params": p}, x))

  def logits(self, images) -> np.ndarray:
    """Logits [N, S, S] of 2-D uint8 images of any sizes (each resized to S x S)."""
    size = self.recipe.image_size
    small = np.stack([train.resize_pair(np.asarray(i, np.uint8), None, size)[0] for i in images])
    return train.predict_logits(self._predict, self.params, small, self.preprocessing, BATCH)

  def masks(self, images) -> list[np.ndarray]:
    """Cleaned boolean masks, each at its image's own size (logits resized bilinearly)."""
    images = list(images)
    out = []
    for image, logit in zip(images, self.logits(images), strict=True):
      height, width = np.shape(image)[:2]
      full = cv2.resize(logit, (width, height), interpolation=cv2.INTER_LINEAR)
      out.append(masks_lib.clean(full > 0))
    return out

  def lungs(self, image, *, name: str = "") -> Found:
    return self.lungs_many([image], names=[name])[0]

  def lungs_many(self, images, *, names=None) -> list[Found]:
    """Masks with their quality check; a failed check is logged with the file and reason and
    its mask is all False, so a caller that crops or blanks uses the whole image instead."""
    images = list(images)
    names = names or [""] * len(images)
    found = []
    for mask, name in zip(self.masks(images), names, strict=True):
      verdict = masks_lib.check(mask)
      if not verdict.ok:
        logging.warning("lung mask of %s failed its check (%s): using the whole image",
                        name or "an image", verdict.reason)
        mask = np.zeros_like(mask)
      found.append(Found(mask, verdict))
    return found


def load_or_train(recipe: Recipe | None = None, *, annotations_root=None, log=logging.info,
                  retrain: bool = False) -> Segmenter:
  """The stored segmenter of `recipe` (default Recipe()) on the annotation set; trains and
  stores it first when missing (or `retrain`). Without the annotation set, a stored model of the
  same recipe is used if there is one."""
  recipe = recipe or Recipe()
  try:
    annotations = annotations_lib.read(annotations_root)
  except annotations_lib.AnnotationError:
    name = store.find(recipe)
    if name is None:
      raise
    params, meta = store.load(name)
    return Segmenter(params, recipe, meta["preprocessing"], name, meta)
  encoder = _encoder_version(recipe)
  name = store.version(recipe, annotations.digest, encoder)
  stored = None if retrain else store.load(name)
  if stored is None:
    log(f"training lung segmenter {name} (recipe {recipe.key()})")
    params, meta = fit(recipe, annotations, log=log)
    store.save(name, params, meta)
    stored = store.load(name)
  params, meta = stored
  return Segmenter(params, recipe, meta["preprocessing"], name, meta)


_DEFAULT: list[Segmenter] = []
_LOCK = threading.Lock()


def default_segmenter() -> Segmenter:
  """The default recipe's segmenter, loaded (or trained) once per process; thread-safe, as the
  dataset build decodes on a thread pool."""
  with _LOCK:
    if not _DEFAULT:
      _DEFAULT.append(load_or_train())
    return _DEFAULT[0]


def _encoder_version(recipe: Recipe) -> str:
  if recipe.encoder != "vgg16":
    return ""
  from cxr_jax.weights import load_pretrained
  return load_pretrained("vgg16").version


def fit(recipe: Recipe, annotations, *, log=logging.info, epochs=None) -> tuple[dict, dict]:
  """Trains on the patient-grouped train split (validation picks the epoch)."""
  parts = annotations_lib.split(annotations.examples, seed=recipe.seed,
                                test_fraction=recipe.test_fraction,
                                val_fraction=recipe.val_fraction)
  params, info = train.train(recipe, parts["train"], parts["val"], log=log, epochs=epochs)
  meta = dict(info, recipe=recipe.to_json(), data=annotations.summary(),
              data_digest=annotations.digest,
              split={k: sorted({e.patient for e in v}) for k, v in parts.items()})
  return params, meta
