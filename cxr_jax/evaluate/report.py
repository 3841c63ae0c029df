"""report.md: a short human-readable summary of metrics.json that links the plots."""

from __future__ import annotations

MISSING = "-"   # how every table and report of the package spells a value that is not defined


def num(value, digits: int = 3) -> str:
  """A figure for a table or a report: `digits` decimals, MISSING where it is None."""
  return MISSING if value is None else f"{value:.{digits}f}"


def _with_ci(value, interval) -> str:
  if interval is None or interval.get("low") is None:
    return num(value)
  return f"{num(value)} [{num(interval['low'])}, {num(interval['high'])}]"


def _class_table(metrics: dict) -> list[str]:
  intervals = metrics.get("intervals", {}).get("per_class", {})
  lines = ["| class | n | sensitivity | specificity | precision | F1 | ROC AUC | AP |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for name, m in metrics["per_class"].items():
    ci = intervals.get(name, {})
    lines.append(
        f"| {name} | {m['positives']} | {_with_ci(m['sensitivity'], ci.get('sensitivity'))} | "
        f"{_with_ci(m['specificity'], ci.get('specificity'))} | {num(m['precision'])} | "
        f"{num(m['f1'])} | {_with_ci(m['roc_auc'], ci.get('roc_auc'))} | "
        f"{num(m['average_precision'])} |")
  macro = metrics["macro"]
  lines.append("| macro | | " + " | ".join(num(macro[k]["value"]) for k in (
      "sensitivity", "specificity", "precision", "f1", "roc_auc", "average_precision")) + " |")
  notes = [f"- {name}: {'; '.join(m['undefined'])}"
           for name, m in metrics["per_class"].items() if m["undefined"]]
  return lines + ([""] + notes if notes else [])


def _confusion_table(metrics: dict) -> list[str]:
  names = metrics["class_names"]
  lines = ["| true \\ predicted | " + " | ".join(names) + " |",
           "| --- |" + " --- |" * len(names)]
  for name, row in zip(names, metrics["confusion_matrix"], strict=True):
    lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
  return lines


def _source_section(metrics: dict) -> list[str]:
  if "by_source" not in metrics:
    return []
  names = metrics["class_names"]
  lines = [
      "## By source", "",
      "The data mixes collections whose label mix differs. If a source holds mostly one label, "
      "a model can score well by recognising the collection. A rule that sees only the source and "
      f"answers its most frequent label reaches accuracy **{num(metrics['source_only_accuracy'])}** "
      f"on this split (model: **{num(metrics['accuracy'])}**).", "",
      "| source | n | true (" + "/".join(names) + ") | predicted (" + "/".join(names) +
      ") | accuracy | " + " | ".join(f"AUC {n}" for n in names) + " |",
      "| --- |" + " --- |" * (4 + len(names))]
  for source, s in metrics["by_source"].items():
    aucs = [num(s["per_class"][n].get("roc_auc")) if "roc_auc" in s["per_class"][n] else MISSING
            for n in names]
    lines.append(
        f"| {source} | {s['num_examples']} | {'/'.join(map(str, s['label_counts']))} | "
        f"{'/'.join(map(str, s['prediction_counts']))} | {num(s['accuracy'])} | "
        + " | ".join(aucs) + " |")
  lines += ["", "`-`: the source lacks one side of that one-vs-rest pair (counts in metrics.json)."]
  return lines + [""]


def _within_source_section(metrics: dict) -> list[str]:
  within = metrics.get("within_source")
  if not within:
    return []
  names = metrics["class_names"]
  lines = ["## Within source", "",
           "Inside one collection the source cannot stand in for the label. Share of each "
           "source's images called each class, and the AUCs each source can define "
           "(normal vs pneumonia scored by 1 - p(normal)).", "",
           "| source | n | labels (" + "/".join(names) + ") | called " +
           " | called ".join(names) + " | COVID AUC | normal-vs-pneumonia AUC |",
           "| --- |" + " --- |" * (4 + len(names))]
  for source, s in within.items():
    aucs = []
    for key in ("covid_auc", "normal_vs_pneumonia_auc"):
      auc = s.get(key) or {}
      aucs.append(num(auc.get("value")))
    lines.append(f"| {source} | {s['num_examples']} | "
                 f"{'/'.join(str(s['labels'][n]) for n in names)} | "
                 + " | ".join(f"{100 * s['called'][n]:.0f} %" for n in names) + " | "
                 + " | ".join(aucs) + " |")
  lines += ["", "`-`: undefined in that source (the reason is in metrics.json)."]
  return lines + [""]


def _data_section(metrics: dict) -> list[str]:
  data = metrics.get("data_splits")
  if not data:
    return []
  names = list(data["cells"])
  cells = sorted({(source, label) for table in data["cells"].values()
                  for source, counts in table.items() for label in counts})
  lines = ["## The run's data", "",
           f"Images per (source, label) cell of each split (splits stratified by "
           f"{data['stratify'].replace('_', ', ')}).", "",
           "| source | label | " + " | ".join(names) + " |", "| --- | --- |" + " --- |" * len(names)]
  for source, label in cells:
    lines.append(f"| {source} | {label} | " + " | ".join(
        str(data["cells"][n].get(source, {}).get(label, 0)) for n in names) + " |")
  if data["missing_cells"]:
    lines += ["", "Cells some split lacks (too few patient groups): "
              + "; ".join(data["missing_cells"]) + "."]
  return lines + [""]


def _rejects_section(metrics: dict) -> list[str]:
  rejects, duplicates = metrics.get("unreadable") or [], metrics.get("duplicates") or []
  if not rejects and not duplicates:
    return []
  lines = ["## Files not evaluated", ""]
  if duplicates:
    lines += [f"{len(duplicates)} file(s) have the same bytes as another file of the set and "
              "were scored once (listed in metrics.json).", ""]
  if not rejects:
    return lines
  lines += [f"{len(rejects)} file(s) could not be used; the others were evaluated.", ""]
  lines += [f"- `{r['file']}`: {r['reason']}" for r in rejects[:50]]
  if len(rejects) > 50:
    lines.append(f"- ... and {len(rejects) - 50} more (all in metrics.json)")
  return lines + [""]


def _calibration_section(metrics: dict) -> list[str]:
  cal = metrics.get("calibration") or {}
  if "temperature" not in cal:  # temperature scaling off (eval.temperature_scaling) or older
    return []
  lines = ["## Calibration", ""]
  if cal["temperature"] is None:
    return lines + [f"Temperature scaling {cal['why']}.", ""]
  return lines + [
      f"One temperature T = {num(cal['temperature'])}, fitted on the {cal['n_val']} validation "
      "images by negative log-likelihood, divides the logits. Rankings, AUCs and accuracy do not "
      "change; predictions.csv keeps the model's own probabilities.", "",
      "| on these images | before | after |", "| --- | --- | --- |",
      f"| expected calibration error ({cal['num_bins']} bins) | {num(cal['ece_before'])} | "
      f"{num(cal['ece_after'])} |",
      f"| negative log-likelihood | {num(cal['nll_before'])} | {num(cal['nll_after'])} |", ""]


def _pct(value) -> str:
  return "n/a" if value is None else f"{100 * value:.0f} %"


def _table_head(columns) -> list[str]:
  return ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]


def _ood_section(metrics: dict) -> list[str]:
  o = metrics.get("ood")
  if not o:
    return []
  lines = ["## Out of distribution", ""]
  if not o.get("defined"):
    return lines + [f"Out-of-distribution scores {o['why']}.", ""]
  fit = o["fit"]
  return lines + [
      f"{len(o['flagged'])} scores of how unlike the run's {fit['n_train']} training images an "
      "image is "
      "(higher: less like them; `cxr_jax/evaluate/ood.py`), each thresholded to keep "
      f"{_pct(fit['keep'])} of the {fit['n_val']} validation images; images above it are "
      f"flagged. Prediction flags with **{fit['score']}**. "
      + (f"Every score but msp and energy reads the images at {fit['image_size']} px "
         "(`eval.ood_image_size`). " if fit.get("image_size") else "")
      + ("These are the run's own test images, the reference the other sets are told apart from."
         if o["is_reference"] else
         "AUROC: telling this set's images from the run's own test split (1: always, 0.5: "
         "never)."), "", *_ood_flagged_table(o), "", *_ood_selective_table(o), "",
      *_ood_source_table(o), ""]


def _ood_flagged_table(o: dict) -> list[str]:
  """Per score: AUROC against the test split per source, and the share flagged per source."""
  sources, other = o["sources"], not o["is_reference"]
  header = [f"AUROC {s}" for s in sources] + ["flagged test split"] if other else []
  lines = _table_head(["score", *header, *(f"flagged {s}" for s in sources)])
  for score, flagged in o["flagged"].items():
    cells = [num(o["auroc"][score][s]) for s in sources] + [_pct(flagged["reference"])] if (
        other) else []
    lines.append(f"| {score} | " + " | ".join(cells + [_pct(flagged[s]) for s in sources]) + " |")
  return lines


def _ood_selective_table(o: dict) -> list[str]:
  """Per score: accuracy on all and on kept images, kept share and AURC, of this set (and pooled
  with the test split)."""
  sets = [("this", "these images")] + ([] if o["is_reference"] else
                                       [("pooled", "with the test split")])
  lines = ["Selective prediction: accuracy on every image and on those each threshold keeps; AURC, "
           "the area under the risk-coverage curve (error rate of the images kept from the least "
           "unusual up; lower is better; `optimal`: every error ranked last).", "",
           *_table_head(["score"] + [f"{label}: {column}" for _, label in sets for column in
                                     ("kept", "accuracy all", "accuracy kept", "AURC (optimal)")])]
  answer = o["fit"].get("answer_accuracy")
  if answer is not None:
    lines[0] += (f" Row doubt: the images answered, those as familiar and as confident as the "
                 f"validation images that were right {_pct(answer)} of the time (`ood.doubt`).")
  for score in o["selective"]["this"]:
    cells = []
    for name, _ in sets:
      sel = o["selective"][name][score]
      rc = sel["risk_coverage"]
      cells += [_pct(sel["kept"]), num(sel["accuracy_all"]), num(sel["accuracy_kept"]),
                f"{num(rc['aurc'])} ({num(rc['aurc_optimal'])})"]
    lines.append(f"| {score} | " + " | ".join(cells) + " |")
  return lines


def _ood_source_table(o: dict) -> list[str]:
  """Per source, the flagging score's selective figures and sensitivities."""
  lines = [f"Per source, flagged by {o['fit']['score']}: sensitivity of each class it holds, all "
           "images -> kept images.", "",
           *_table_head(["source", "images", "kept", "accuracy all", "accuracy kept",
                         "sensitivity"])]
  for source, s in o["by_source"].items():
    sens = ", ".join(f"{c} {num(v)} -> {num(s['sensitivity_kept'][c])}"
                     for c, v in s["sensitivity_all"].items())
    lines.append(f"| {source} | {s['images']} | {_pct(s['kept'])} | {num(s['accuracy_all'])} | "
                 f"{num(s['accuracy_kept'])} | {sens} |")
  return lines


def render_report(metrics: dict, plots: dict, *, title: str) -> str:
  """Markdown text; `plots` maps kind -> file name relative to the report."""
  intervals = metrics.get("intervals")
  ci_note = ("no confidence intervals" if not intervals else
             f"{int(intervals['ci'] * 100)} % percentile intervals from {intervals['num_resamples']} "
             f"bootstrap resamples of {intervals['num_groups']} "
             f"{'patient groups' if intervals['unit'] == 'patient_group' else 'images'}")
  lines = [
      f"# {title}", "",
      f"{metrics['num_examples']} images; labels {dict(zip(metrics['class_names'], metrics['label_counts'], strict=True))}; "
      f"{ci_note}.", "",
      f"**Accuracy {_with_ci(metrics['accuracy'], (intervals or {}).get('accuracy'))}**, "
      f"expected calibration error {num(metrics['calibration']['ece'])}.", "",
      "## Per class (one vs rest)", "", *_class_table(metrics), "",
      "## Confusion matrix", "", *_confusion_table(metrics), "",
      *_source_section(metrics),
      *_within_source_section(metrics),
      *_calibration_section(metrics),
      *_data_section(metrics),
      *_ood_section(metrics),
      *_rejects_section(metrics),
      "## Plots", ""]
  captions = dict(roc="ROC curves", pr="precision-recall curves", confusion="confusion matrix",
                  reliability="reliability curve",
                  ood="out of distribution: risk-coverage and share flagged per source")
  for kind, file in plots.items():
    lines += [f"![{captions.get(kind, kind)}]({file})", ""]
  lines += ["All numbers, curves included, are in `metrics.json`.", ""]
  return "\n".join(lines)
