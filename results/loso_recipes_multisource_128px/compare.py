"""Leave-one-source-out of the robustness ablation's leaders beside the baseline recipe's (issue 30
item 5): SIIM-FISABIO-RSNA and Kermany held out, the figures the issue's goals name, and how well
each out-of-distribution score tells the held-out collection from the rest's test split.

  PYTHONPATH=$PWD .venv/bin/python results/loso_recipes_multisource_128px/compare.py \
      baseline=results/loso_multisource_128px lung_crop=workdirs/loso_lung_crop ... > compare.md

Each NAME=DIR holds a LOSO table (loso.json) and, below it, each held-out source's metrics in a
folder named after it: a workdir's runs/without_<source>_fold0/eval_held_out/metrics.json or a
committed results folder's without_<source>/held_out_metrics.json.
"""
import json
import sys
from pathlib import Path

import numpy as np

SOURCES = ("siim-fisabio-rsna", "kermany-train")
SCORES = ("knn", "knn_blocks")


def held_out_metrics(root: Path, source: str) -> dict:
  found = sorted(p for pattern in ("held_out_metrics.json", "eval_held_out/metrics.json")
                 for p in root.rglob(pattern) if f"without_{source}" in str(p))
  if not found:
    raise SystemExit(f"{root}: no held_out_metrics.json for {source} (has its LOSO run finished?)")
  return json.loads(found[0].read_text())


def sensitivity_at(roc: dict, specificity: float) -> float:
  """Best COVID sensitivity at specificity >= `specificity` on the ROC (its threshold read on the
  held-out images themselves: what the source could reach, not what a fixed rule gives)."""
  fpr, tpr = np.asarray(roc["fpr"]), np.asarray(roc["tpr"])
  return float(tpr[fpr <= 1 - specificity + 1e-12].max())


def fmt(x, spec=".3f"):
  return "-" if x is None else format(x, spec)


recipes = [a.split("=", 1) for a in sys.argv[1:]]
rows = {}
for name, root in recipes:
  table = {r["held_out_source"]: r for r in json.loads((Path(root) / "loso.json").read_text())["rows"]}
  rows[name] = {s: (table.get(s), held_out_metrics(Path(root), s) if s in table else None)
                for s in SOURCES}

print("# Leave one source out: the baseline recipe and the robustness ablation's leaders\n")
print("SIIM-FISABIO-RSNA held out (2,000 images: 1,000 typical COVID, 1,000 negative). Goal: COVID-vs-"
      "normal AUC >= 0.85, sensitivity >= 0.80 at specificity >= 0.70.\n")
print("| recipe | COVID AUC | sensitivity / specificity (argmax) | best sensitivity at specificity >= 0.70 "
      "| typical COVID called pneumonia | rest's test accuracy | OOD AUROC knn / knn_blocks |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for name, per in rows.items():
  row, m = per["siim-fisabio-rsna"]
  if row is None:
    print(f"| {name} | (not run) |" + " |" * 5)
    continue
  cm = np.asarray(m["confusion_matrix"])
  auroc = m["ood"]["auroc"]
  print(f"| {name} | {row['held_covid_auc']:.3f} | {row['held_covid_sensitivity']:.3f} / "
        f"{1 - row['held_non_covid_called_covid']:.3f} | "
        f"{sensitivity_at(m['curves']['covid']['roc'], 0.70):.3f} | {cm[0, 2] / cm[0].sum():.3f} | "
        f"{row['rest_test_accuracy']:.3f} | "
        + " / ".join(fmt(auroc.get(s, {}).get("all")) for s in SCORES) + " |")

print("\nKermany's paediatric training split held out (1,400 images: 700 normal, 700 pneumonia). Goal: "
      "normal-vs-pneumonia AUC >= 0.85, <= 10 % called COVID.\n")
print("| recipe | normal-vs-pneumonia AUC | called COVID | called pneumonia | rest's test accuracy "
      "| OOD AUROC knn / knn_blocks |")
print("| --- | --- | --- | --- | --- | --- |")
for name, per in rows.items():
  row, m = per["kermany-train"]
  if row is None:
    print(f"| {name} | (not run) |" + " |" * 4)
    continue
  called = m["within_source"]["kermany-train"]["called"]
  auroc = m["ood"]["auroc"]
  print(f"| {name} | {fmt(row.get('held_normal_vs_pneumonia_auc'))} | "
        f"{100 * row['held_non_covid_called_covid']:.1f} % | {100 * called['pneumonia']:.1f} % | "
        f"{row['rest_test_accuracy']:.3f} | "
        + " / ".join(fmt(auroc.get(s, {}).get("all")) for s in SCORES) + " |")
