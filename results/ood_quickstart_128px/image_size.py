"""The product's out-of-distribution section at the run's size and at eval.ood_image_size, side by
side: per score, the AUROC of telling each external source from the run's test split (the share
of it flagged at the threshold keeping 95 % of validation), the test split's flagged share, and
the pooled selective figures (test split + the set) of the flagging score and of the doubt. Read
from the metrics.json of evaluations of one run at each size (`--mode=evaluate`, one workdir per
setting, each with its external sets):

  PYTHONPATH=$PWD .venv/bin/python results/ood_quickstart_128px/image_size.py \
    128=workdirs/quickstart 256=workdirs/quickstart_ood256 > image_size.md
"""
import json
import sys
from pathlib import Path

SCORES = ("msp", "energy", "mahalanobis", "knn", "mahalanobis_blocks", "knn_blocks")


def sections(workdir: Path) -> dict:
  """{set name: its ood section} of every external evaluation in `workdir`."""
  return {p.parent.name: json.loads(p.read_text())["ood"]
          for p in sorted((workdir / "external").glob("*/metrics.json"))}


def main(args) -> None:
  runs = [(label, sections(Path(path))) for label, path in (a.split("=", 1) for a in args)]
  sets = sorted(set.intersection(*(set(s) for _, s in runs)))
  groups = [(name, src) for name in sets for src in runs[0][1][name]["sources"]]
  fit = runs[0][1][sets[0]]["fit"]
  print(f"Fit: {fit['n_train']} training images, thresholds keeping {100 * fit['keep']:.0f} % of "
        f"{fit['n_val']} validation images, k = {fit['k']}. Each cell: AUROC against the run's "
        "test split (share of the source flagged).\n")
  print("| score | size | " + " | ".join(f"{n}: {s}" for n, s in groups) + " | test flagged |")
  print("|" + " --- |" * (len(groups) + 3))
  for score in SCORES:
    for label, secs in runs:
      cells = [f"{secs[n]['auroc'][score][s]:.3f} ({100 * secs[n]['flagged'][score][s]:.0f} %)"
               for n, s in groups]
      test = secs[sets[0]]["flagged"][score]["reference"]
      print(f"| {score} | {label} | " + " | ".join(cells) + f" | {100 * test:.0f} % |")
  print("\nSelective prediction pooled with the test split: accuracy on the kept images (share "
        "kept), all images' accuracy in the header.\n")
  print("| rule | size | " + " | ".join(
      f"{n} (all {runs[0][1][n]['selective']['pooled']['msp']['accuracy_all']:.3f})" for n in sets)
      + " |")
  print("|" + " --- |" * (len(sets) + 2))
  for rule in (fit["score"], "doubt"):
    for label, secs in runs:
      cells = []
      for n in sets:
        p = secs[n]["selective"]["pooled"][rule]
        acc = "none kept" if p["accuracy_kept"] is None else f"{p['accuracy_kept']:.3f}"
        cells.append(f"{acc} ({100 * p['kept']:.0f} %)")
      print(f"| {rule} | {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main(sys.argv[1:])
