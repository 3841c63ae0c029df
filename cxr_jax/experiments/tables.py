"""Tables of an experiment: Table 2 style per group and class (CSV + markdown), CV fold table."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from cxr_jax import files
from cxr_jax.evaluate.report import MISSING, num
from cxr_jax.experiments.summary import CLASS_METRICS, class_names


def _fmt(entry: dict | None, digits: int = 3) -> str:
  if not entry or entry.get("mean") is None:
    return MISSING
  text = f"{entry['mean']:.{digits}f}"
  if entry.get("low") is not None:
    text += f" [{entry['low']:.{digits}f}, {entry['high']:.{digits}f}]"
  return text


def table_rows(groups: dict[str, dict], axes: list[str]) -> list[dict]:
  """One row per group and class: the axes' values and mean / sd / CI of each class metric."""
  rows = []
  for name, group in groups.items():
    for cls in class_names(groups):
      row = {"group": name, **{a: group["values"].get(a) for a in axes}, "class": cls,
             "num_folds": len(group["folds"])}
      for metric in CLASS_METRICS:
        entry = group["summary"].get(f"{cls}/{metric}", {})
        for part, key in (("", "mean"), ("_sd", "sd"), ("_low", "low"), ("_high", "high")):
          row[f"{metric}{part}"] = entry.get(key)
      rows.append(row)
  return rows


def write_csv(path: Path, rows: list[dict]) -> None:
  """Rows as CSV, atomically; the columns are every key in first-seen order (rows of runs that
  lack one, e.g. an external set added later, leave it empty)."""
  fields = list(dict.fromkeys(k for row in rows for k in row)) or ["group"]
  text = io.StringIO()
  writer = csv.DictWriter(text, fields)
  writer.writeheader()
  writer.writerows(rows)
  files.write_atomic(path, text.getvalue())


def write_table(workdir: Path, stem: str, doc: dict, rows: list[dict], text: str) -> list[str]:
  """An experiment's table three ways: stem.md (text), stem.csv (rows), stem.json (doc)."""
  write_csv(workdir / f"{stem}.csv", rows)
  files.write_json(workdir / f"{stem}.json", doc)
  files.write_atomic(workdir / f"{stem}.md", text)
  return [str(workdir / f"{stem}.{ext}") for ext in ("md", "csv", "json")]


def markdown_table(groups: dict[str, dict], ci: float, title: str) -> str:
  """Table 2: per group and class, accuracy / sensitivity / specificity / AUC with CIs."""
  interval = {g["interval"] for g in groups.values()}
  lines = [f"# {title}", "",
           f"Test split. Mean over folds ({100 * ci:.0f}% interval: {', '.join(sorted(interval))}).",
           "", "| Group | Folds | Class | Accuracy | Sensitivity | Specificity | AUC |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  for name, group in groups.items():
    for cls in class_names(groups):
      cells = [_fmt(group["summary"].get(f"{cls}/{m}")) for m in CLASS_METRICS]
      lines.append(f"| {name} | {len(group['folds'])} | {cls} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def markdown_winners(groups: dict[str, dict], won: dict) -> str:
  metric = won["select_metric"]
  lines = ["", "## Which group wins", "",
           "| Group | Overall accuracy | Macro AUC | COVID AUC | Mean val loss |",
           "| --- | --- | --- | --- | --- |"]
  for name, g in groups.items():
    s = g["summary"]
    lines.append(f"| {name} | {_fmt(s.get('accuracy'))} | {_fmt(s.get('macro_auc'))} | "
                 f"{_fmt(s.get('covid/auc'))} | {_fmt(s.get('val_loss'), 4)} |")
  lines += ["", f"- By test {metric} (how the paper chose): **{won['by_test']}**",
            f"- By mean validation loss (does not look at the test split): "
            f"**{won['by_val_loss']}**"]
  return "\n".join(lines) + "\n"


def markdown_folds(name: str, group: dict, level: int = 2) -> str:
  """A CV report: per-fold metrics, mean +- sd, best fold by test and by validation loss."""
  keys = ["accuracy", "macro_auc", *(f"covid/{m}" for m in CLASS_METRICS), "val_loss"]
  lines = [f"{'#' * level} {name}", "", "| Fold | " + " | ".join(keys) + " |",
           "| --- " * (len(keys) + 1) + "|"]
  for fold, flat in group["per_fold"].items():
    marks = "".join([" (best by test)" if int(fold) == group["best_fold_by_test"] else "",
                     " (best by val loss)" if int(fold) == group["best_fold_by_val_loss"] else ""])
    cells = [num(flat.get(k), 4) for k in keys]
    lines.append(f"| {fold}{marks} | " + " | ".join(cells) + " |")
  sd = lambda e: "" if e.get("sd") is None else f" ± {e['sd']:.4f}"
  means = [(MISSING if group["summary"][k]["mean"] is None else
            f"{group['summary'][k]['mean']:.4f}{sd(group['summary'][k])}") for k in keys]
  lines.append("| mean ± sd | " + " | ".join(means) + " |")
  lines += ["", f"Best fold by test {group['select_metric']} (the paper's choice): "
            f"{group['best_fold_by_test']}; by validation loss: {group['best_fold_by_val_loss']}.",
            ""]
  return "\n".join(lines) + "\n"


def markdown_by_source(by_group: dict[str, dict]) -> str:
  """Accuracy and COVID AUC inside each source, per group ({group: summary.by_source(...)})."""
  sources = sorted({s for b in by_group.values() for s in b if s != "_source_only"})
  if not sources:
    return ""
  head = " | ".join(f"{s} acc | {s} COVID AUC" for s in sources)
  lines = ["", "## By source", "",
           "Test images per source: " + ", ".join(
               f"{s} {next(b[s]['num_examples'] for b in by_group.values() if s in b):.0f}"
               for s in sources) + ". COVID AUC inside a source that holds one side only: -.",
           "", f"| Group | {head} |", "| --- " * (2 * len(sources) + 1) + "|"]
  for name, b in by_group.items():
    cells = []
    for s in sources:
      entry = b.get(s, {})
      cells += [num(entry.get("accuracy")), num(entry.get("covid_auc"))]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  only = [b.get("_source_only") for b in by_group.values() if b.get("_source_only") is not None]
  if only:
    lines += ["", f"A rule that predicts each image's class from its source alone reaches accuracy "
              f"{np.mean(only):.3f} on the same test split: accuracy above it is what the model adds "
              "beyond recognising the collection."]
  return "\n".join(lines) + "\n"


def markdown_external(groups: dict[str, dict]) -> str:
  """Per group, fold, external set and source: accuracy, share called COVID, COVID sensitivity,
  normal-vs-pneumonia AUC (config.eval.external; "" when no group has one)."""
  rows = []
  for name, g in groups.items():
    for fold, sets in g.get("external", {}).items():
      for set_name, h in sets.items():
        for source, s in h["by_source"].items():
          rows.append(f"| {name} | {fold} | {set_name} | {source} | {s['images']} | "
                      f"{num(s['accuracy'])} | {num(s['called'].get('covid'))} | "
                      f"{num(s['sensitivity'].get('covid'))} | "
                      f"{num(s.get('normal_vs_pneumonia_auc'))} |")
  if not rows:
    return ""
  return "\n".join([
      "", "## External sets (evaluation only, never trained on)", "",
      "Per source of each set: accuracy, share of its images called COVID, COVID sensitivity "
      "(sources holding COVID) and normal-vs-pneumonia AUC (score 1 - p(normal)); -: undefined.",
      "", "| Group | Fold | Set | Source | Images | Accuracy | Called COVID | COVID sensitivity | "
      "Normal-vs-pneumonia AUC |", "| --- " * 9 + "|", *rows]) + "\n"


def markdown_unfinished(status: dict) -> str:
  """The runs the tables leave out and why: failed (its error; under SLURM its job, log and the
  log's last line) or still pending. Start the same command again to retry or collect them."""
  left = {name: s for name, s in status.items() if s not in ("skipped", "trained")}
  if not left:
    return ""
  return ("\n## Runs not in these tables (start the same command again to retry or collect)\n\n"
          + "".join(f"- {name}: {s}\n" for name, s in left.items()))
