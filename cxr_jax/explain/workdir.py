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
from cxr_jax.evaluate.workdir import data_batches, load_split
from cxr_jax.explain.gradcam import DEFAULT_LAYER, make_cam_fn
from cxr_jax.explain.lrp import DEFAULT_EPSILON, make_lrp_fn
from cxr_jax.explain.overlay import save_overlay


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
                    which: str = "best", out_dir=None) -> dict:
  """Writes heatmap overlays for `per_class` right and wrong predictions of each class.

  Layout: <out_dir or workdir/explain_<split>_<method>>/<true class>/{correct,wrong}/<id>.png,
  plus index.json listing every image with its probabilities. The map explains the predicted
  class: method "gradcam"/"gradcam++" at `layer` (default config.explain.layer, else
  block5/conv3); method "lrp" at the input (positive relevance; epsilon config.explain.lrp_epsilon,
  else `lrp.DEFAULT_EPSILON`).
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
  index = []
  if picked:
    batches = data_batches(loaded, batch_size, ids=np.array(sorted(where), np.int64))
    for batch in batches:
      images = batch["image"].reshape((-1,) + batch["image"].shape[-3:])
      res = cam_fn(trained.variables, jnp.asarray(images), jnp.full(len(images), -1, jnp.int32))
      for row, (i, real) in enumerate(zip(batch["index"].reshape(-1), batch["mask"].reshape(-1),
                                          strict=True)):
        if real:
          index.append(_write_one(out, int(i), where[int(i)], images[row], res, row, meta))
  files.write_json(out / "index.json", dict(workdir=str(workdir), split=split, method=method,
                                             layer=layer, checkpoint=which, images=index))
  logging.info("explain: %d overlays in %s", len(index), out)
  counts = {f"{e['label']}/{e['outcome']}": 0 for e in index}
  for e in index:
    counts[f"{e['label']}/{e['outcome']}"] += 1
  return dict(written=str(out), counts=counts, method=method, layer=layer)


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
