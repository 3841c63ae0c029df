"""The OOD scores on held-out sources: a --mode=loso experiment's per-source AUROC and flagged shares.

  python results/ood_quickstart_128px/loso_scores.py workdirs/loso_quickstart \
      --out results/ood_quickstart_128px/loso_scores.md

Each run of a leave-one-source-out experiment (`runs/without_<source>_fold<k>/`) was trained
without one source and evaluated on all of it (`eval_held_out/metrics.json`, its `ood` section):
the held-out source is a collection that model never saw, so how well each score tells it from the
run's own test split is the project's way of choosing a score without external data (issue 33).
Writes one table: per held-out source, each score's AUROC (held-out source against the run's test
split) and the share of the source flagged at the run's validation threshold (the test split's
share in brackets); then the mean over sources and the number of sources each score wins.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def rows(workdir: Path) -> list[dict]:
  """One dict per finished run: source, images, auroc {score: x}, flagged {score: (held, test)}."""
  out = []
  for metrics in sorted(workdir.glob("runs/*/eval_held_out/metrics.json")):
    ood = json.loads(metrics.read_text()).get("ood") or {}
    if not ood.get("defined"):
      continue
    (source,) = ood["sources"]
    out.append({
        "source": source,
        "run": metrics.parent.parent.name,
        "images": ood["by_source"][source]["images"],
        "auroc": {s: v[source] for s, v in ood["auroc"].items()},
        "flagged": {s: (v[source], v["reference"]) for s, v in ood["flagged"].items()},
    })
  if not out:
    raise SystemExit(f"{workdir}: no runs/*/eval_held_out/metrics.json with an ood section: run "
                     f"--mode=loso first (evaluation writes it)")
  return out


def table(found: list[dict]) -> str:
  scores = list(found[0]["auroc"])
  head = "| held-out source (images) | " + " | ".join(scores) + " |"
  lines = [head, "|" + " --- |" * (len(scores) + 1)]
  for r in found:
    cells = [f"{r['auroc'][s]:.3f} ({100 * r['flagged'][s][0]:.0f} % / {100 * r['flagged'][s][1]:.0f} %)"
             for s in scores]
    lines.append(f"| {r['source']} ({r['images']}) | " + " | ".join(cells) + " |")
  mean = {s: sum(r["auroc"][s] for r in found) / len(found) for s in scores}
  wins = {s: sum(max(r["auroc"], key=r["auroc"].get) == s for r in found) for s in scores}
  lines.append("| **mean AUROC** | " + " | ".join(f"**{mean[s]:.3f}**" for s in scores) + " |")
  lines.append("| sources won | " + " | ".join(str(wins[s]) for s in scores) + " |")
  return "\n".join(lines)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("workdir", type=Path, help="a --mode=loso workdir")
  ap.add_argument("--out", type=Path, help="markdown file (default: print)")
  args = ap.parse_args()
  found = rows(args.workdir)
  text = (f"OOD scores on held-out sources, from `{args.workdir}` ({len(found)} runs). Cells: AUROC "
          f"of telling the held-out source from the run's own test split (share of the source "
          f"flagged / share of the test split flagged, at the run's validation threshold).\n\n"
          + table(found) + "\n")
  if args.out:
    args.out.write_text(text)
  print(text)


if __name__ == "__main__":
  main()
