"""The generalisation audit of a trained run: one page a reviewer reads before any headline.

  python launch.py --mode=audit --workdir=W [--external=manifest:../shared/data/cxr-external ...]

Writes W/audit/audit.md, audit.json and audit.png (summary figure), from:
- the internal test split (W/audit/test/: the usual evaluation, re-run from the kept checkpoint),
  with the source-only rule and the within-source figures beside the pooled ones;
- each external set (W/external/<name>/, `cxr_jax.evaluate.external`);
- the source-recognition probe (`cxr_jax.evaluate.probes`) on every labelled image of the run's
  data, from the kept model's features and from the frozen ImageNet features as the reference.
- the lung probes (`lung_probes`): the kept model on the test split with the lungs blanked, and
  with everything outside them blanked, from the lung segmenter's masks (`cxr_jax.lungs`);
- the heatmap lung share (`heatmap_lung_share`): how much of the kept model's Grad-CAM mass lies
  on those masks, against the masks' area share (chance). Both lung parts use one segmentation.
Leave-one-source-out (and the lung parts, without a segmenter) are listed as not run, with what
they need, rather than left out silently.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from cxr_jax import files, machine
from cxr_jax.data.records import NO_LABEL
from cxr_jax.evaluate.report import _num, _with_ci, _within_source_section

OUT_DIR = "audit"
NOT_RUN = {
    "leave_one_source_out": "an experiment of its own: --mode=loso (one model per held-out "
                            "source) writes loso.md; name it with --config.eval.loso=W to "
                            "include its table here",
}


def audit_workdir(workdir, externals=(), *, which: str = "best", config=None,
                  segmenter=None, loso: str | Path = "") -> dict:
  """Runs every part of the audit on the kept model of `workdir`; returns audit.json's content.

  `segmenter` (a `cxr_jax.lungs.Segmenter`; default: the stored one, trained first if missing)
  gives the masks of the lung probes and the heatmap lung share. `loso`: a --mode=loso workdir
  (config.eval.loso) whose table the page includes."""
  from cxr_jax.evaluate.external import evaluate_external
  from cxr_jax.evaluate.workdir import evaluate_workdir, load_split
  from cxr_jax.lungs.annotations import AnnotationError
  from cxr_jax.weights.errors import WeightsError

  workdir = Path(workdir)
  loso_part = read_loso(loso) if loso else None   # a wrong path fails before minutes of work
  out = workdir / OUT_DIR
  internal = evaluate_workdir(workdir, "test", config, which=which, out_dir=out / "test")
  external = evaluate_external(workdir, externals, which=which) if externals else {}
  probe = source_probes(workdir, which=which)
  not_run, lungs, share = dict(NOT_RUN), None, None
  try:
    segmenter = segmenter or _stored_segmenter()
  except (AnnotationError, WeightsError) as e:  # no annotation set, no stored segmenter
    not_run["lungs_blanked"] = not_run["heatmap_lung_share"] = f"no lung segmenter ({e})"
  else:
    loaded = load_split(workdir, "test", which=which)
    masks = segment_test_split(loaded, segmenter)
    lungs, share = _lung_probes(loaded, masks), heatmap_lung_share(loaded, masks)
  if loso_part is not None:
    not_run.pop("leave_one_source_out", None)
  result = dict(
      workdir=str(workdir), checkpoint=which, machine=machine.summary(),
      internal=_part(internal), external={n: _part(m) for n, m in external.items()},
      source_recognition=probe, lung_probes=lungs, heatmap_lung_share=share,
      leave_one_source_out=loso_part, not_run=not_run)
  figure = write_figure(result, out / "audit.png")
  result["figure"] = figure
  files.write_json(out / "audit.json", result)
  files.write_atomic(out / "audit.md", render_audit(result))
  logging.info("audit of %s written to %s", workdir, out)
  return result


def read_loso(directory) -> dict:
  """A finished --mode=loso experiment's rows (loso.json) and table (loso.md), named by path;
  a missing one is an error naming the path and the command that writes it."""
  directory = Path(directory)
  doc_path, table_path = directory / "loso.json", directory / "loso.md"
  if not (doc_path.is_file() and table_path.is_file()):
    raise FileNotFoundError(
        f"config.eval.loso={str(directory)!r} holds no loso.json/loso.md: run python launch.py "
        f"--mode=loso --workdir={directory} with the same config first")
  table = table_path.read_text().split("\n", 1)[1].strip()   # without its title
  return dict(workdir=str(directory), rows=json.loads(doc_path.read_text())["rows"], table=table)


def _part(metrics: dict) -> dict:
  """What the audit keeps of one evaluation (the full set stays in its own metrics.json)."""
  keep = ("num_examples", "class_names", "label_counts", "prediction_counts", "accuracy",
          "source_only_accuracy", "within_source", "unreadable", "written")
  part = {k: metrics[k] for k in keep if k in metrics}
  part["accuracy_ci"] = (metrics.get("intervals") or {}).get("accuracy")
  part["roc_auc"] = {c: m["roc_auc"] for c, m in metrics["per_class"].items()}
  part["sensitivity"] = {c: m["sensitivity"] for c, m in metrics["per_class"].items()}
  return part


def source_probes(workdir, *, which: str = "best", reference: bool = True) -> dict:
  """Source recognition from the kept model's features and (reference=True) from ImageNet's,
  every labelled image."""
  from cxr_jax import weights
  from cxr_jax.evaluate.inference import run_batches
  from cxr_jax.evaluate.probes import make_feature_fn, source_recognition
  from cxr_jax.evaluate.workdir import data_batches, load_split

  loaded = load_split(workdir, "test", which=which)
  meta = loaded.built.metadata
  ids = meta["id"][meta["label"] != NO_LABEL]
  batch_size = int(loaded.config.train.eval_batch_size)
  feature_fn = make_feature_fn(loaded.trained.model)

  def probe(variables):
    feats, _, got = run_batches(lambda x: feature_fn(variables, x),
                                data_batches(loaded, batch_size, ids))
    return source_recognition(feats, meta["source"][got], meta["patient_group"][got],
                              seed=int(loaded.config.seed))

  variables = {k: v for k, v in loaded.trained.variables.items()
               if k not in ("perturbations", "intermediates")}
  result = {"images": "every labelled image of the run's data (all splits)",
            "kept_model": probe(variables)}
  if not reference:
    return result
  arch = loaded.config.model.arch
  try:
    pre = weights.load_pretrained(arch, source=loaded.config.model.get("weights_source") or None)
  except Exception as e:  # noqa: BLE001 - the reference is optional; say why it is missing
    result["imagenet"] = dict(defined=False, why=f"ImageNet {arch} weights unavailable: {e}")
    return result
  if pre.preprocessing != loaded.trained.preprocessing:
    result["imagenet"] = dict(defined=False, why=f"ImageNet weights expect {pre.preprocessing} "
                              f"normalisation, the run used {loaded.trained.preprocessing}")
    return result
  reference = dict(variables, params=weights.merge_pretrained(variables["params"], pre.params))
  if pre.batch_stats:
    reference["batch_stats"] = weights.merge_pretrained(variables["batch_stats"], pre.batch_stats)
  result["imagenet"] = probe(reference)
  return result


LUNG_VARIANTS = ("original", "lungs_blanked", "outside_blanked")


def _stored_segmenter():
  from cxr_jax.lungs import segment
  return segment.default_segmenter()


def lung_probes(workdir, *, which: str = "best", segmenter=None) -> dict:
  """The kept model on the test split as it is, with the lungs blanked (set to the image mean)
  and with everything outside the lungs blanked, on the images whose predicted mask passes its
  check (the others are listed). A model that still separates the classes with no lungs to look
  at is using shortcuts (Maguolo & Nanni 2020)."""
  from cxr_jax.evaluate.workdir import load_split

  loaded = load_split(workdir, "test", which=which)
  return _lung_probes(loaded, segment_test_split(loaded, segmenter or _stored_segmenter()))


def segment_test_split(loaded, seg) -> dict:
  """The predicted lung mask of every test image, segmented once for every lung part of the
  audit: dict(segmenter, found {id: Found of a mask that passed its check}, qc_failed [dict(id,
  file, reason)]). Images whose mask failed are left out of every lung part, never given an
  empty mask."""
  from cxr_jax.evaluate.workdir import data_batches
  from cxr_jax.explain.overlay import input_gray

  files_of = loaded.built.metadata["file"]
  found, failed = {}, []
  for batch in data_batches(loaded, int(loaded.config.train.eval_batch_size)):
    images, index, real = _rows(batch)
    gray = input_gray(images[real], loaded.trained.preprocessing)
    names = [str(files_of[i]) for i in index[real]]
    for i, name, f in zip(index[real], names, seg.lungs_many(list(gray), names=names), strict=True):
      if f.check.ok:
        found[int(i)] = f
      else:
        failed.append(dict(id=int(i), file=name, reason=f.check.reason))
  return dict(segmenter=seg.version, found=found, qc_failed=failed)


def _rows(batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(images [N, H, W, 3], ids [N], real [N] bool: False on padding) of an evaluation batch."""
  images = np.asarray(batch["image"]).reshape((-1,) + np.shape(batch["image"])[-3:])
  real = np.asarray(batch.get("mask", np.ones(len(images)))).reshape(-1) > 0
  return images, np.asarray(batch["index"]).reshape(-1), real


def _row_masks(images, index, lungs: dict) -> tuple[np.ndarray, np.ndarray]:
  """(masks [N, H, W], kept [N]): each row's lung mask where it passed its check; other rows
  (padding, failed masks) get an empty mask only to keep the batch's shape, and kept False."""
  kept = np.array([int(i) in lungs["found"] for i in index])
  empty = np.zeros(images.shape[1:3], bool)
  masks = np.stack([lungs["found"][int(i)].mask if k else empty
                    for i, k in zip(index, kept, strict=True)])
  return masks, kept


def _lung_probes(loaded, lungs: dict) -> dict:
  from cxr_jax.evaluate.inference import make_predict_fn
  from cxr_jax.evaluate.workdir import data_batches, score
  from cxr_jax.lungs import masks

  predict = make_predict_fn(loaded.trained.model)
  variables = {k: v for k, v in loaded.trained.variables.items()
               if k not in ("perturbations", "intermediates")}
  probs = {v: [] for v in LUNG_VARIANTS}
  labels, ids = [], []
  for batch in data_batches(loaded, int(loaded.config.train.eval_batch_size)):
    images, index, _ = _rows(batch)
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
    result[name] = _part(score(loaded.config, labels, np.concatenate(probs[name]), meta, ids))
  return result


def heatmap_lung_share(loaded, lungs: dict) -> dict:
  """The share of the kept model's Grad-CAM mass (the explain mode's map: predicted class, at
  config.explain.layer) on each test image's predicted lung mask, beside chance (the mask's area
  share), on the images whose mask passed its check."""
  import jax.numpy as jnp

  # An upward import (evaluate -> explain), late as the trainer's (ARCHITECTURE, issue 20): the
  # audit scores the very maps --mode=explain draws.
  from cxr_jax.evaluate.workdir import data_batches
  from cxr_jax.explain.gradcam import DEFAULT_LAYER, make_cam_fn
  from cxr_jax.explain.regions import heatmap_lung_shares, summarize_lung_shares

  layer = (loaded.config.get("explain") or {}).get("layer", DEFAULT_LAYER)
  cam_fn = make_cam_fn(loaded.trained.model, layer, "gradcam")
  per_image = []
  for batch in data_batches(loaded, int(loaded.config.train.eval_batch_size)):
    images, index, _ = _rows(batch)
    masks, keep = _row_masks(images, index, lungs)
    if keep.any():
      res = cam_fn(loaded.trained.variables, jnp.asarray(images),
                   jnp.full(len(images), -1, jnp.int32))
      cams = np.asarray(res["cam"])[keep]
      per_image += heatmap_lung_shares(cams, masks[keep], index[keep])["per_image"]
  return dict(method="gradcam", layer=layer, explained="the predicted class",
              segmenter=lungs["segmenter"], **summarize_lung_shares(per_image),
              qc_failed=lungs["qc_failed"], per_image=per_image)


def _lung_lines(lungs: dict | None) -> list[str]:
  if not lungs:
    return []
  lines = ["## Lungs blanked / outside blanked", "",
           f"The kept model on {lungs['images']} test images as they are, with the lungs set to "
           f"the image mean, and with everything outside the lungs set to it (lung segmenter "
           f"`{lungs['segmenter']}`; {len(lungs['qc_failed'])} image(s) whose mask failed its "
           "check are left out). With no lungs to look at, a model that is reading the disease "
           "should fall to the source-only rule or below; one that stays high is reading the "
           "collection.", "",
           "| input | accuracy | COVID AUC | source-only rule |", "| --- | --- | --- | --- |"]
  for name in LUNG_VARIANTS:
    part = lungs[name]
    lines.append(f"| {name.replace('_', ' ')} | {_with_ci(part['accuracy'], part['accuracy_ci'])} | "
                 f"{_num(part['roc_auc'].get('covid'))} | {_num(part.get('source_only_accuracy'))} |")
  return lines + [""]


def _share_lines(share: dict | None) -> list[str]:
  if not share:
    return []
  if share["mean_share"] is None:
    gap = "no image's map has positive mass"
  else:
    gap = (f"mean share **{share['mean_share']:.3f}** against a chance of "
           f"{share['mean_chance']:.3f} (share - chance {share['share_minus_chance']:+.3f})")
  return ["## Heatmap lung share", "",
          f"How much of the kept model's Grad-CAM mass (class predicted, layer `{share['layer']}`) "
          f"lies on each test image's predicted lung mask (segmenter `{share['segmenter']}`), "
          f"over {share['images']} images: {gap}. Chance is the mask's area share, what a map "
          "spread evenly scores; a share near it says the maps do not favour the lungs. "
          f"{len(share['qc_failed'])} image(s) whose mask failed its check are left out"
          + (f", {share['no_positive_mass']} with no positive Grad-CAM mass too"
             if share["no_positive_mass"] else "") + ".", ""]


def _summary_rows(result: dict) -> list[tuple[str, float | None, dict | None]]:
  """(label, value, interval) of the figures the summary plot shows."""
  internal = result["internal"]
  rows = [("internal accuracy", internal["accuracy"], internal["accuracy_ci"]),
          ("source-only rule (internal)", internal.get("source_only_accuracy"), None),
          ("internal COVID AUC", internal["roc_auc"].get("covid"), None)]
  for source, w in internal.get("within_source", {}).items():
    value = (w.get("covid_auc") or {}).get("value")
    if value is not None:
      rows.append((f"COVID AUC inside {source} (n={w['num_examples']})", value, None))
  for name, part in result["external"].items():
    rows.append((f"{name} accuracy", part["accuracy"], part["accuracy_ci"]))
    for source, w in part.get("within_source", {}).items():
      nvp = (w.get("normal_vs_pneumonia_auc") or {}).get("value")
      if nvp is not None:
        rows.append((f"{source} normal-vs-pneumonia AUC (n={w['num_examples']})", nvp, None))
      if "covid" in w["sensitivity"]:
        rows.append((f"{source} COVID sensitivity", w["sensitivity"]["covid"], None))
      else:  # a source without COVID: every COVID call is a false alarm
        rows.append((f"{source} called COVID (lower is better)", w["called"].get("covid"), None))
  for key, label in (("kept_model", "source probe, kept model"), ("imagenet", "source probe, ImageNet")):
    p = result["source_recognition"].get(key, {})
    if p.get("defined"):
      rows.append((f"{label} (balanced acc.; chance {p['chance_balanced_accuracy']:.2f})",
                   p["balanced_accuracy"], None))
  for name in LUNG_VARIANTS[1:]:
    part = (result.get("lung_probes") or {}).get(name)
    if part:
      rows.append((f"accuracy, {name.replace('_', ' ')}", part["accuracy"], part["accuracy_ci"]))
  share = result.get("heatmap_lung_share") or {}
  if share.get("mean_share") is not None:
    rows.append((f"Grad-CAM lung share (chance {share['mean_chance']:.2f})", share["mean_share"],
                 None))
  return [r for r in rows if r[1] is not None]


def write_figure(result: dict, path: Path) -> str:
  """One horizontal bar per figure, intervals where the evaluation has them."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = _summary_rows(result)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig, ax = plt.subplots(figsize=(8, 0.38 * len(rows) + 1.2))
  y = np.arange(len(rows))[::-1]
  values = [v for _, v, _ in rows]
  err = np.array([[v - ci["low"], ci["high"] - v] if ci and ci.get("low") is not None else [0, 0]
                  for _, v, ci in rows]).T
  colors = ["tab:blue" if "internal" in lab or "inside" in lab else
            "tab:purple" if "probe" in lab else "tab:red" for lab, _, _ in rows]
  ax.barh(y, values, xerr=err, color=colors, capsize=3)
  ax.set_yticks(y, [lab for lab, _, _ in rows], fontsize=8)
  ax.axvline(0.5, color="0.6", lw=1, ls="--")
  ax.set(xlim=(0, 1), title=f"Audit of {Path(result['workdir']).name}")
  for yi, v, hi in zip(y, values, np.asarray(values) + err[1], strict=True):
    ax.text(min(hi + 0.01, 0.93), yi, f"{v:.2f}", va="center", fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path.name


def _probe_lines(probe: dict) -> list[str]:
  lines = ["| features | images | folds | accuracy | majority source | balanced accuracy | chance |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  for key, label in (("kept_model", "kept model"), ("imagenet", "ImageNet (frozen, reference)")):
    p = probe.get(key, {})
    if p.get("defined"):
      lines.append(f"| {label} | {p['num_examples']} | {p['folds']} | {_num(p['accuracy'])} | "
                   f"{_num(p['majority_accuracy'])} | {_num(p['balanced_accuracy'])} | "
                   f"{_num(p['chance_balanced_accuracy'])} |")
    else:
      lines.append(f"| {label} | - | - | - | - | - | - |  ({p.get('why', 'not run')})")
  kept = probe.get("kept_model", {})
  if kept.get("defined"):
    recall = ", ".join(f"{s} {r:.2f}" for s, r in kept["recall"].items())
    lines += ["", f"Per-source recall (kept model): {recall}."]
  return lines


def _loso_lines(loso: dict | None) -> list[str]:
  if not loso:
    return []
  return ["## Leave one source out", "", f"From `{loso['workdir']}` (models trained without each "
          "source; the audited model is not one of them).", "", loso["table"], ""]


def render_audit(result: dict) -> str:
  internal = result["internal"]
  lines = [f"# Generalisation audit of {Path(result['workdir']).name}", "",
           f"Kept model ({result['checkpoint']} checkpoint). Machine: {result['machine']}.", "",
           f"![summary]({result['figure']})", "",
           "## Internal test split", "",
           f"{internal['num_examples']} images. Accuracy "
           f"**{_with_ci(internal['accuracy'], internal['accuracy_ci'])}**; a rule that knows only "
           f"the source reaches **{_num(internal.get('source_only_accuracy'))}**. ROC AUC: "
           + ", ".join(f"{c} {_num(v)}" for c, v in internal["roc_auc"].items()) + ".", "",
           *_within_source_section(internal)[2:]]
  for name, part in result["external"].items():
    lines += [f"## External: {name} (evaluation only, never trained on)", "",
              f"{part['num_examples']} images. Accuracy "
              f"**{_with_ci(part['accuracy'], part['accuracy_ci'])}**. Sensitivity: "
              + ", ".join(f"{c} {_num(v)}" for c, v in part["sensitivity"].items()
                          if v is not None) + ".", "",
              *_within_source_section(part)[2:]]
    if part.get("unreadable"):
      lines += [f"{len(part['unreadable'])} file(s) could not be read (listed in its report.md).",
                ""]
  lines += ["## Source recognition", "",
            "How well a logistic regression names the image's collection from the backbone's "
            "pooled features (patient-grouped cross-validation). Far above chance means the "
            "collection is written in the features, and a classifier can use it.", "",
            *_probe_lines(result["source_recognition"]), "",
            *_lung_lines(result.get("lung_probes")),
            *_share_lines(result.get("heatmap_lung_share")),
            *_loso_lines(result.get("leave_one_source_out")),
            "## Not run", ""]
  lines += [f"- {k.replace('_', ' ')}: {why}" for k, why in result["not_run"].items()]
  lines += ["", "Every number is in `audit.json`; each evaluation's full metrics, plots and "
            "predictions are in its own folder (`audit/test/`, `external/<name>/`).", ""]
  return "\n".join(lines)
