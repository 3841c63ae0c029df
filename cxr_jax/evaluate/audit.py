"""The generalisation audit of a trained run: one page a reviewer reads before any headline.

  python launch.py --mode=audit --workdir=W [--external=manifest:../shared/data/cxr-external ...]

Writes W/audit/audit.md, audit.json and audit.png (summary figure), from:
- the internal test split (W/audit/test/: the usual evaluation, re-run from the kept checkpoint),
  with the source-only rule and the within-source figures beside the pooled ones;
- each external set (W/external/<name>/, `cxr_jax.evaluate.external`);
- the source-recognition probe (`cxr_jax.evaluate.probes`) on every labelled image of the run's
  data, from the kept model's features and from the frozen ImageNet features as the reference.
- the lung probes (`shortcuts.lung_probes`): the kept model on the test split with the lungs blanked, and
  with everything outside them blanked, from the lung segmenter's masks (`cxr_jax.lungs`);
- the heatmap lung share (`shortcuts.heatmap_lung_share`): how much of the kept model's Grad-CAM
  mass lies on those masks, against the masks' area share (chance). Both use one segmentation.
Each part is an evaluator (`audit_evaluators`) of the run, loaded once (`run.LoadedRun`).
Leave-one-source-out (and the lung parts, without a segmenter) are listed as not run, with what
they need, rather than left out silently.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from cxr_jax import files, machine
from cxr_jax.evaluate.report import _ood_section, _with_ci, _within_source_section, num
from cxr_jax.evaluate.shortcuts import LUNG_VARIANTS
from cxr_jax.evaluate.summary import brief

OUT_DIR = "audit"
NOT_RUN = {
    "leave_one_source_out": "an experiment of its own: --mode=loso (one model per held-out "
                            "source) writes loso.md; name it with --config.eval.loso=W to "
                            "include its table here",
}


def audit_evaluators(externals=()) -> dict:
  """The audit's parts: {key in audit.json: evaluator}, written under audit/ (external sets under
  the workdir's external/, where every evaluation of the run puts them)."""
  from cxr_jax.evaluate import evaluators as ev

  return dict(internal=ev.Split("test", folder="test"),
              external={name: ev.External(spec, name)
                        for spec, name in ev.external_names(externals).items()},
              **dict(zip(("source_recognition", "lung_probes", "heatmap_lung_share"),
                         ev.from_config(None, ("source_probe", "lung_probes", "heatmap_lung_share")),
                         strict=True)))


def audit_workdir(workdir, externals=(), *, which: str = "best", config=None,
                  segmenter=None, loso: str | Path = "") -> dict:
  """Runs every part of the audit on the kept model of `workdir`, loaded once; returns
  audit.json's content. Every part is computed again (an audit reports the run as it is now).

  `segmenter` (a `cxr_jax.lungs.Segmenter`; default: the stored one, trained first if missing)
  gives the masks of the lung probes and the heatmap lung share. `loso`: a --mode=loso workdir
  (config.eval.loso) whose table the page includes."""
  from cxr_jax.evaluate.run import LoadedRun
  from cxr_jax.lungs.annotations import AnnotationError
  from cxr_jax.weights.errors import WeightsError

  workdir = Path(workdir)
  loso_part = read_loso(loso) if loso else None   # a wrong path fails before minutes of work
  out = workdir / OUT_DIR
  run = LoadedRun.from_workdir(workdir, config, which=which, segmenter=segmenter)
  parts = audit_evaluators(externals)
  internal = parts["internal"].run(run, out, redo=True)
  external = {n: e.run(run, workdir, redo=True) for n, e in parts["external"].items()}
  probe = parts["source_recognition"].run(run, out, redo=True)
  not_run, lungs, share = dict(NOT_RUN), None, None
  try:
    run.segmenter()
  except (AnnotationError, WeightsError) as e:  # no annotation set, no stored segmenter
    not_run["lungs_blanked"] = not_run["heatmap_lung_share"] = f"no lung segmenter ({e})"
  else:
    lungs = parts["lung_probes"].run(run, out, redo=True)
    share = parts["heatmap_lung_share"].run(run, out, redo=True)
  if loso_part is not None:
    not_run.pop("leave_one_source_out", None)
  result = dict(
      workdir=str(workdir), checkpoint=which, machine=machine.summary(),
      internal=brief(internal), external={n: brief(m) for n, m in external.items()},
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
                 f"{num(part['roc_auc'].get('covid'))} | {num(part.get('source_only_accuracy'))} |")
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
    rows += _ood_rows(part.get("ood") or {})
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


def _ood_rows(o: dict) -> list[tuple[str, float | None, None]]:
  """Per source of an external set: the flagging score's AUROC against the test split, the share
  it flags and the share answered (`ood.doubt`)."""
  if not o.get("defined"):
    return []
  score = o["fit"]["score"]
  return [row for source in o["sources"] for row in (
      (f"{source} told from test split ({score} AUROC)", o["auroc"][score][source], None),
      (f"{source} flagged out of distribution ({score})", o["flagged"][score][source], None),
      (f"{source} answered (doubt)", o["by_source_answered"][source]["kept"], None))]


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
      lines.append(f"| {label} | {p['num_examples']} | {p['folds']} | {num(p['accuracy'])} | "
                   f"{num(p['majority_accuracy'])} | {num(p['balanced_accuracy'])} | "
                   f"{num(p['chance_balanced_accuracy'])} |")
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
           f"the source reaches **{num(internal.get('source_only_accuracy'))}**. ROC AUC: "
           + ", ".join(f"{c} {num(v)}" for c, v in internal["roc_auc"].items()) + ".", "",
           *_within_source_section(internal)[2:], *_ood_section(internal)[1:]]
  for name, part in result["external"].items():
    lines += [f"## External: {name} (evaluation only, never trained on)", "",
              f"{part['num_examples']} images. Accuracy "
              f"**{_with_ci(part['accuracy'], part['accuracy_ci'])}**. Sensitivity: "
              + ", ".join(f"{c} {num(v)}" for c, v in part["sensitivity"].items()
                          if v is not None) + ".", "",
              *_within_source_section(part)[2:], *_ood_section(part)[1:]]
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
