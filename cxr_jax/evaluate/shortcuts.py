"""Whether the kept model reads the lungs: the lung probes (test images with the lungs blanked,
and with everything outside them blanked) and the heatmap lung share (Grad-CAM mass on the lung
masks against their area). Both take a `run.LoadedRun` and its test split's masks, segmented once
(`LoadedRun.test_lungs`)."""

from __future__ import annotations

import numpy as np

from cxr_jax.evaluate.run import batch_rows, data_batches
from cxr_jax.evaluate.summary import brief
from cxr_jax.evaluate.workdir import score

LUNG_VARIANTS = ("original", "lungs_blanked", "outside_blanked")


def _row_masks(images, index, lungs: dict) -> tuple[np.ndarray, np.ndarray]:
  """(masks [N, H, W], kept [N]): each row's lung mask where it passed its check; other rows
  (padding, failed masks) get an empty mask only to keep the batch's shape, and kept False."""
  kept = np.array([int(i) in lungs["found"] for i in index])
  empty = np.zeros(images.shape[1:3], bool)
  masks = np.stack([lungs["found"][int(i)].mask if k else empty
                    for i, k in zip(index, kept, strict=True)])
  return masks, kept


def lung_probes(run) -> dict:
  """The kept model on the test split as it is, with the lungs blanked (set to the image mean)
  and with everything outside the lungs blanked, on the images whose predicted mask passes its
  check (the others are listed). A model that still separates the classes with no lungs to look
  at is using shortcuts (Maguolo & Nanni 2020). `run`: a `run.LoadedRun`."""
  from cxr_jax.lungs import masks

  loaded, lungs = run.split("test"), run.test_lungs()
  predict, variables = run.predict_fn, run.variables
  probs = {v: [] for v in LUNG_VARIANTS}
  labels, ids = [], []
  for batch in data_batches(loaded, int(loaded.config.train.eval_batch_size)):
    images, index, _ = batch_rows(batch)
    regions, keep = _row_masks(images, index, lungs)
    # Whole batches keep one compiled shape; rows not kept are dropped after predicting.
    pairs = list(zip(images, regions, strict=True))
    variants = {"original": images,
                "lungs_blanked": np.stack([masks.blank(x, m) for x, m in pairs]),
                "outside_blanked": np.stack([masks.blank(x, ~m) for x, m in pairs])}
    for name, x in variants.items():
      probs[name].append(np.asarray(predict(variables, x))[keep])
    labels.append(np.asarray(batch["label"]).reshape(-1)[keep])
    ids.append(index[keep])
  labels, ids = np.concatenate(labels).astype(np.int64), np.concatenate(ids)
  meta = loaded.built.metadata
  result = dict(segmenter=lungs["segmenter"], images=int(len(ids)),
                qc_failed=[dict(file=f["file"], reason=f["reason"]) for f in lungs["qc_failed"]])
  for name in LUNG_VARIANTS:
    result[name] = brief(score(run.trained.config, labels, np.concatenate(probs[name]), meta, ids))
  return result


def heatmap_lung_share(run) -> dict:
  """The share of the kept model's Grad-CAM mass (the explain mode's map: predicted class, at
  config.explain.layer) on each test image's predicted lung mask, beside chance (the mask's area
  share), on the images whose mask passed its check. `run`: a `run.LoadedRun`."""
  import jax.numpy as jnp

  # Same layer as explain (the audit scores the very maps --mode=explain draws).
  from cxr_jax.explain.gradcam import DEFAULT_LAYER
  from cxr_jax.explain.regions import heatmap_lung_shares, summarize_lung_shares

  loaded, lungs = run.split("test"), run.test_lungs()
  layer = (loaded.config.get("explain") or {}).get("layer", DEFAULT_LAYER)
  cam_fn = run.cam_fn(layer, "gradcam")
  per_image = []
  for batch in data_batches(loaded, int(loaded.config.train.eval_batch_size)):
    images, index, _ = batch_rows(batch)
    masks, keep = _row_masks(images, index, lungs)
    if keep.any():
      res = cam_fn(run.variables, jnp.asarray(images),
                   jnp.full(len(images), -1, jnp.int32))
      cams = np.asarray(res["cam"])[keep]
      per_image += heatmap_lung_shares(cams, masks[keep], index[keep])["per_image"]
  return dict(method="gradcam", layer=layer, explained="the predicted class",
              segmenter=lungs["segmenter"], **summarize_lung_shares(per_image),
              qc_failed=lungs["qc_failed"], per_image=per_image)


def robustness_probes(run) -> dict:
  """The robustness ablation's probes of each run, in one file: source recognition from the kept
  model's features (ImageNet's reference is the baseline audit's) and the lung probes (or why
  they could not run)."""
  from cxr_jax.evaluate.probes import source_probes
  from cxr_jax.lungs.annotations import AnnotationError
  from cxr_jax.weights.errors import WeightsError

  result = {"source_recognition": source_probes(run, reference=False)}
  try:
    result["lung_probes"] = lung_probes(run)
  except (AnnotationError, WeightsError) as e:   # no annotation set, no stored segmenter
    result["lung_probes"] = {"defined": False, "why": f"no lung segmenter ({e})"}
  return result
