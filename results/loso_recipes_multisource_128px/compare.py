"""Leave-one-source-out of the robustness ablation's leaders beside the baseline recipe's (issue 30
item 5): SIIM-FISABIO-RSNA and Kermany held out (then the other five for the recipe), the figures the issue's goals name, and how well
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

SOURCES = ("siim-fisabio-rsna", "kermany-train", "ieee8023", "nih-chestxray14", "hannover",
           "actualmed", "figure1")
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
  if not (Path(root) / "loso.json").is_file():
    raise SystemExit(f"{name}={root}: no loso.json there (a LOSO workdir or a collected results folder)")
  table = {r["held_out_source"]: r for r in json.loads((Path(root) / "loso.json").read_text())["rows"]}
  rows[name] = {s: (table.get(s), held_out_metrics(Path(root), s) if s in table else None)
                for s in SOURCES}



def confusion(m):
  cm = np.asarray(m["confusion_matrix"], float)
  return cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)   # rows: true class, as class_names


TABLES = [  # (source, what it holds and the goal, [(column, cell(loso row, held-out metrics))])
    ("siim-fisabio-rsna", "SIIM-FISABIO-RSNA held out (2,000 images: 1,000 typical COVID, 1,000 "
     "negative). Goal: COVID-vs-normal AUC >= 0.85, sensitivity >= 0.80 at specificity >= 0.70.",
     [("COVID AUC", lambda r, m: f"{r['held_covid_auc']:.3f}"),
      ("sensitivity / specificity (argmax)", lambda r, m: f"{r['held_covid_sensitivity']:.3f} / "
       f"{1 - r['held_non_covid_called_covid']:.3f}"),
      ("best sensitivity at specificity >= 0.70",
       lambda r, m: f"{sensitivity_at(m['curves']['covid']['roc'], 0.70):.3f}"),
      ("typical COVID called pneumonia", lambda r, m: f"{confusion(m)[0, 2]:.3f}")]),
    ("kermany-train", "Kermany's paediatric training split held out (1,400 images: 700 normal, "
     "700 pneumonia). Goal: normal-vs-pneumonia AUC >= 0.85, <= 10 % called COVID.",
     [("normal-vs-pneumonia AUC", lambda r, m: fmt(r.get("held_normal_vs_pneumonia_auc"))),
      ("called COVID", lambda r, m: f"{100 * r['held_non_covid_called_covid']:.1f} %"),
      ("normal called normal", lambda r, m: f"{100 * confusion(m)[1, 1]:.1f} %"),
      ("pneumonia called pneumonia", lambda r, m: f"{100 * confusion(m)[2, 2]:.1f} %")]),
    ("ieee8023", "ieee8023 held out (449 images: 364 COVID, 14 normal, 71 pneumonia; web-collected "
     "case figures). Goal: COVID AUC >= 0.75.",
     [("COVID AUC", lambda r, m: fmt(r.get("held_covid_auc"))),
      ("COVID sensitivity", lambda r, m: fmt(r.get("held_covid_sensitivity"))),
      ("non-COVID called COVID", lambda r, m: fmt(r.get("held_non_covid_called_covid"))),
      ("normal-vs-pneumonia AUC", lambda r, m: fmt(r.get("held_normal_vs_pneumonia_auc")))]),
    ("nih-chestxray14", "ChestX-ray14 held out (832 images: 412 normal, 420 pneumonia; adults). "
     "Goal: <= 10 % called COVID.",
     [("called COVID", lambda r, m: f"{100 * r['held_non_covid_called_covid']:.1f} %"),
      ("normal-vs-pneumonia AUC", lambda r, m: fmt(r.get("held_normal_vs_pneumonia_auc"))),
      ("pneumonia called pneumonia", lambda r, m: f"{100 * confusion(m)[2, 2]:.1f} %")]),
    *[(source, f"{name} held out (COVID films only, or nearly: the one figure it defines is COVID "
       "sensitivity; no goal in the issue).",
       [("images", lambda r, m: str(r["images"])),
        ("COVID sensitivity", lambda r, m: fmt(r.get("held_covid_sensitivity"))),
        ("seen: COVID sensitivity on its test-split images",
         lambda r, m: fmt(r.get("seen_covid_sensitivity")))])
      for source, name in (("hannover", "Hannover"), ("actualmed", "Actualmed"),
                           ("figure1", "Figure1"))],
]
COMMON = [("rest's test accuracy", lambda r, m: f"{r['rest_test_accuracy']:.3f}"),
          ("OOD AUROC " + " / ".join(SCORES),
           lambda r, m: " / ".join(fmt(m["ood"]["auroc"].get(s, {}).get("all")) for s in SCORES))]

print("# Leave one source out: the baseline recipe and the robustness ablation's leaders")
for source, intro, columns in TABLES:
  columns = columns + COMMON
  print(f"\n{intro}\n\n| recipe | " + " | ".join(c for c, _ in columns) + " |")
  print("|" + " --- |" * (len(columns) + 1))
  for name, per in rows.items():
    row, m = per[source]
    cells = ["(not run)"] + [""] * (len(columns) - 1) if row is None else [
        cell(row, m) for _, cell in columns]
    print(f"| {name} | " + " | ".join(cells) + " |")
