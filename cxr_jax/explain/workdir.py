"""explain_workdir: Grad-CAM or LRP overlays of right and wrong predictions per class (Lee et al.
figs 8-10; Bassi & Attux 2022 for LRP)."""

from __future__ import annotations

import logging
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from cxr_jax import files
from cxr_jax.data.records import LABELS
from cxr_jax.evaluate.inference import predict_arrays
from cxr_jax.evaluate.run import data_batches, load_split
from cxr_jax.explain import regions
from cxr_jax.explain.gradcam import DEFAULT_LAYER, make_cam_fn
from cxr_jax.explain.lrp import DEFAULT_EPSILON, make_lrp_fn
from cxr_jax.explain.overlay import input_gray, save_overlay


def pick_examples(labels, preds, ids, per_class: int, seed: int) -> list[tuple[int, str, str]]:
  """Up to `per_class` right and `per_class` wrong predictions of every true class.

  Drawn at random (seeded) rather than in id order, because ids follow the source files'
  order and the first images of a class often all come from one collection.
  Returns (id, class name, "correct" | "wrong") tuples.
  """
  rng = np.random.default_rng(seed)
  picked = []
  for k, name in enumerate(LABELS):
    for outcome, sel in (("correct", (labels == k) & (preds == k)),
                         ("wrong", (labels == k) & (preds != k))):
      chosen = rng.permutation(ids[sel])[:per_class]
      picked += [(int(i), name, outcome) for i in sorted(chosen)]
  return picked


def explain_workdir(workdir, split: str = "test", per_class: int | None = None,
                    method: str = "gradcam", config=None, *, layer: str | None = None,
                    which: str = "best", out_dir=None, segmenter=None) -> dict:
  """Writes heatmap overlays for `per_class` right and wrong predictions of each class.

  Layout: <out_dir or workdir/explain_<split>_<method>>/<true class>/{correct,wrong}/<id>.png,
  plus index.json listing every image with its probabilities. The map explains the predicted
  class: method "gradcam"/"gradcam++" at `layer` (default config.explain.layer, else
  block5/conv3); method "lrp" at the input (positive relevance; epsilon config.explain.lrp_epsilon,
  else `lrp.DEFAULT_EPSILON`).

  Beside each overlay, the share of the map's positive mass in the fixed lung boxes (the prior,
  `regions.LUNG_BOXES`) and on the image's predicted lung mask, each against its chance level
  (the region's area share); index.json's `regions` holds their means. `segmenter` (a
  `cxr_jax.lungs.Segmenter`; default: the stored one if a segmenter is stored, `False`: none)
  gives the masks; an image whose mask fails its check is listed and left out, and without a
  segmenter the mask share is marked not run, with why.
  """
  loaded = load_split(workdir, split, config, which)
  config, trained, meta = loaded.config, loaded.trained, loaded.built.metadata
  explain_config = config.get("explain") or {}
  layer = layer or explain_config.get("layer", DEFAULT_LAYER)
  per_class = int(per_class if per_class is not None else explain_config.get("per_class", 4))
  batch_size = int(config.train.eval_batch_size)

  probs, labels, ids = predict_arrays(trained.model, trained.variables,
                                      data_batches(loaded, batch_size))
  picked = pick_examples(labels, probs.argmax(axis=1), ids, per_class, int(config.seed))
  where = {i: (name, outcome) for i, name, outcome in picked}
  out = Path(out_dir) if out_dir else Path(workdir) / f"explain_{split}_{method}"
  if method == "lrp":
    layer = "input"
    cam_fn = make_lrp_fn(trained.model, trained.preprocessing,
                         epsilon=float(explain_config.get("lrp_epsilon", DEFAULT_EPSILON)))
  else:
    cam_fn = make_cam_fn(trained.model, layer, method)
  segmenter, no_segmenter = _segmenter_or_why(segmenter)
  index, cams, found = [], [], []
  if picked:
    batches = data_batches(loaded, batch_size, ids=np.array(sorted(where), np.int64))
    for batch in batches:
      images = batch["image"].reshape((-1,) + batch["image"].shape[-3:])
      res = cam_fn(trained.variables, jnp.asarray(images), jnp.full(len(images), -1, jnp.int32))
      real = batch["mask"].reshape(-1) > 0
      for row, i in enumerate(batch["index"].reshape(-1)):
        if real[row]:
          index.append(_write_one(out, int(i), where[int(i)], images[row], res, row, meta))
      cams.append(np.asarray(res["cam"])[real])
      if segmenter is not None:
        names = [str(meta["file"][i]) for i in batch["index"].reshape(-1)[real]]
        found += segmenter.lungs_many(list(input_gray(images[real], trained.preprocessing)),
                                      names=names)
  shares = _region_shares(index, cams, found, no_segmenter, segmenter)
  files.write_json(out / "index.json", dict(workdir=str(workdir), split=split, method=method,
                                             layer=layer, checkpoint=which, regions=shares,
                                             images=index))
  logging.info("explain: %d overlays in %s; %s", len(index), out, _regions_line(shares))
  counts = {f"{e['label']}/{e['outcome']}": 0 for e in index}
  for e in index:
    counts[f"{e['label']}/{e['outcome']}"] += 1
  return dict(written=str(out), counts=counts, method=method, layer=layer, regions=shares)


def _segmenter_or_why(segmenter):
  """(segmenter, None) or (None, why not). Explain only loads a stored segmenter: training one
  takes minutes (`python -m cxr_jax.lungs train` or --mode=audit does)."""
  if segmenter is False:
    return None, "no lung segmenter asked for (segmenter=False)"
  if segmenter is not None:
    return segmenter, None
  from cxr_jax.lungs import segment, store
  from cxr_jax.lungs.annotations import AnnotationError
  from cxr_jax.weights.errors import WeightsError

  if not any(store.root().glob("unet-*.json")):
    return None, (f"no stored lung segmenter in {store.root()} (explain does not train one; "
                  "`python -m cxr_jax.lungs train` or --mode=audit does)")
  try:
    return segment.default_segmenter(), None
  except (AnnotationError, WeightsError) as e:
    return None, f"no lung segmenter ({e})"


def _region_shares(index: list, cams: list, found: list, no_segmenter, segmenter) -> dict:
  """Means of the box-prior and lung-mask shares (index.json's `regions`); each entry of `index`
  gets its own image's shares."""
  ids = [e["id"] for e in index]
  maps = np.concatenate(cams) if cams else np.zeros((0, 1, 1), np.float32)
  box = regions.box_prior_shares(maps, ids)
  per_id = {p["id"]: p for p in box.pop("per_image")}
  for e in index:
    e["box_share"] = per_id[e["id"]]["share"]
  if segmenter is None:
    return dict(box_prior=box, lung_mask=dict(not_run=no_segmenter))
  lung = regions.found_lung_shares(maps, found, ids, [e["file"] for e in index])
  lung["segmenter"] = segmenter.version
  per_id = {p["id"]: p for p in lung.pop("per_image")}
  failed = {f["id"]: f["reason"] for f in lung["qc_failed"]}
  for e in index:
    if e["id"] in failed:
      e["lung_mask_failed"] = failed[e["id"]]
    else:
      e["lung_share"], e["lung_chance"] = per_id[e["id"]]["share"], per_id[e["id"]]["chance"]
  return dict(box_prior=box, lung_mask=lung)


def _regions_line(shares: dict) -> str:
  parts = []
  for name, part in shares.items():
    if part.get("mean_share") is None:
      parts.append(f"{name} share not run ({part['not_run']})" if "not_run" in part
                   else f"{name} share: no image with positive mass")
    else:
      parts.append(f"{name} share {part['mean_share']:.3f} (chance {part['mean_chance']:.3f})")
  return "; ".join(parts)


def _write_one(out: Path, i: int, where: tuple[str, str], image, res: dict, row: int,
               meta) -> dict:
  name, outcome = where
  probs = np.asarray(res["probs"][row]).tolist()
  target = LABELS[int(res["targets"][row])]
  file = str(meta["file"][i])
  heading = (f"{Path(file).name[:60]} ({meta['source'][i]})\n"
             f"true {name}, predicted {LABELS[int(np.argmax(probs))]}; map for {target}")
  path = save_overlay(out / name / outcome / f"{i}.png", image, np.asarray(res["cam"][row]),
                      probs, LABELS, heading=heading)
  return dict(id=i, file=file, source=str(meta["source"][i]), label=name, outcome=outcome,
              explained_class=target, probs=dict(zip(LABELS, probs, strict=True)),
              overlay=str(path.relative_to(out)))
