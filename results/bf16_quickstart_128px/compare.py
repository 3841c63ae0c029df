"""Compares two trained quick-start workdirs (fp32 and bf16): the test split with its intervals,
COVID AUCs, cxr-external, and how often the two models agree image by image.

  python results/bf16_quickstart_128px/compare.py FP32_WORKDIR BF16_WORKDIR > comparison.json
"""

import csv
import json
import sys
from pathlib import Path


def figures(workdir: Path) -> dict:
  m = json.loads((workdir / "metrics.json").read_text())
  e = json.loads((workdir / "external/cxr-external/metrics.json").read_text())["headline"]
  auc = m["intervals"]["per_class"]["covid"]["roc_auc"]
  return {"dtype": json.loads((workdir / "config.json").read_text())["model"]["dtype"],
          "test_accuracy": [m["accuracy"], m["intervals"]["accuracy"]["low"],
                            m["intervals"]["accuracy"]["high"]],
          "test_covid_auc": [m["per_class"]["covid"]["roc_auc"], auc["low"], auc["high"]],
          "ieee8023_covid_auc": m["within_source"]["ieee8023"]["covid_auc"]["value"],
          "external_accuracy": [e["accuracy"], e["accuracy_ci"]["low"], e["accuracy_ci"]["high"]],
          "external_by_source": {s: {"called_covid": v["called"].get("covid"),
                                     "sensitivity": v["sensitivity"],
                                     "normal_vs_pneumonia_auc": v["normal_vs_pneumonia_auc"]}
                                 for s, v in e["by_source"].items()},
          "external_mean_p_covid_by_source": mean_p_covid(
              workdir / "external/cxr-external/predictions.csv"),
          "val_loss_by_epoch": [h["val_loss"] for h in
                                json.loads((workdir / "history.json").read_text())]}


def mean_p_covid(predictions: Path) -> dict:
  """Each source's mean p(covid): where a lean shows before any image changes class."""
  by = {}
  for r in csv.DictReader(open(predictions)):
    by.setdefault(r["source"], []).append(float(r["p_covid"]))
  return {s: sum(v) / len(v) for s, v in sorted(by.items())}


def agreement(a: Path, b: Path, name: str) -> dict:
  rows = [{r["id"]: r for r in csv.DictReader(open(w / name))} for w in (a, b)]
  ids = sorted(set(rows[0]) & set(rows[1]))
  same = sum(rows[0][i]["prediction"] == rows[1][i]["prediction"] for i in ids)
  diff = [abs(float(rows[0][i]["p_covid"]) - float(rows[1][i]["p_covid"])) for i in ids]
  return {"images": len(ids), "same_class": same / len(ids),
          "mean_abs_diff_p_covid": sum(diff) / len(diff), "max_abs_diff_p_covid": max(diff)}


if __name__ == "__main__":
  fp32, bf16 = map(Path, sys.argv[1:3])
  print(json.dumps({"fp32": figures(fp32), "bf16": figures(bf16),
                    "agreement": {"test": agreement(fp32, bf16, "predictions.csv"),
                                  "cxr-external": agreement(
                                      fp32, bf16, "external/cxr-external/predictions.csv")}},
                   indent=1))
