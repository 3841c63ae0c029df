"""Separates training precision from inference precision: every trained quick-start workdir given
scores its own test split and cxr-external again in float32 and in bfloat16
(`cxr_jax.predict.iter_predictions`, the kept parameters), and the share of each source's images
called COVID is reported per (trained in, scored in) cell, with how many images change class
between the two inference dtypes and in which direction.

  python results/bf16_quickstart_128px/cross_dtype.py WORKDIR... > cross_dtype.json

Each run scored in its own dtype must reproduce its evaluation's predictions.csv (checked: the
largest p(covid) difference is reported as `vs_evaluation`), so the table compares like with like.
"""

import csv
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from cxr_jax.machine import describe
from cxr_jax.predict import iter_predictions

SPLITS = {"test": "predictions.csv", "cxr-external": "external/cxr-external/predictions.csv"}


def scored(workdir: Path, rows: list[dict], dtype: str) -> list[tuple[float, str]]:
  """(p(covid), predicted class) per row, scored in `dtype`."""
  out = list(iter_predictions(workdir, [r["file"] for r in rows], dtype=dtype, batch_size=32))
  bad = [r for r in out if "error" in r]
  if bad:
    raise ValueError(f"{workdir}: {len(bad)} files could not be scored, first: {bad[0]}")
  return [(r["probs"]["covid"], r["prediction"]) for r in out]


def cell(rows, preds) -> dict:
  by = {}
  for r, (_, label) in zip(rows, preds, strict=True):
    by.setdefault(r["source"], Counter())[label] += 1
  return {s: {"images": sum(c.values()), "called_covid": c["covid"] / sum(c.values())}
          for s, c in sorted(by.items())}


def main(workdirs):
  report = {"machine": describe(), "runs": {}}
  for w in map(Path, workdirs):
    trained_in = json.loads((w / "config.json").read_text())["model"]["dtype"]
    run = {"trained_in": trained_in}
    for split, name in SPLITS.items():
      rows = list(csv.DictReader(open(w / name)))
      cells = {d: scored(w, rows, d) for d in ("float32", "bfloat16")}
      stored = np.array([float(r["p_covid"]) for r in rows])
      own = np.array([p for p, _ in cells[trained_in]])
      flips = Counter(f"{a}->{b}" for (_, a), (_, b) in zip(cells["float32"], cells["bfloat16"],
                                                           strict=True) if a != b)
      diff = np.abs(np.array([p for p, _ in cells["float32"]]) -
                    np.array([p for p, _ in cells["bfloat16"]]))
      run[split] = {
          "vs_evaluation": float(np.max(np.abs(own - stored))),
          "scored_in": {d: cell(rows, c) for d, c in cells.items()},
          "class_changes_fp32_to_bf16": dict(sorted(flips.items())),
          "mean_abs_diff_p_covid": float(diff.mean()), "max_abs_diff_p_covid": float(diff.max()),
          "mean_p_covid_shift_bf16_minus_fp32": float(np.mean(
              [b[0] - a[0] for a, b in zip(cells["float32"], cells["bfloat16"], strict=True)]))}
    report["runs"][w.name] = run
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  main(sys.argv[1:])
