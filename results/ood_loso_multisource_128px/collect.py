"""Which out-of-distribution score tells a collection the model never saw from its own test
split? Read from a finished --mode=loso workdir: per held-out source, each score's AUROC (the
rest's test split vs the held-out source), the share of the source flagged at the threshold kept
95 % of validation, and the selective accuracy pooled with the test split. This is how the default
(config.eval.ood_score) is chosen: held-out sources, never cxr-external.

  python results/ood_loso_multisource_128px/collect.py LOSO_WORKDIR [FOLDER] > ood_loso.md

FOLDER: each run's evaluation of its held-out source (default eval_held_out, the trainer's; e.g.
eval_held_out_ood256 for one made again at eval.ood_image_size=256).
"""

import json
import sys
from pathlib import Path


def main(workdir: Path, folder: str = "eval_held_out") -> str:
  rows, scores = [], None
  for path in sorted(workdir.glob(f"runs/without_*/{folder}/metrics.json")):
    ood = json.loads(path.read_text()).get("ood") or {}
    if not ood.get("defined"):
      rows.append((path.parts[-3], None))
      continue
    scores = list(ood["auroc"])
    rows.append((path.parts[-3], ood))
  lines = ["| held-out run | images | " + " | ".join(f"{s} AUROC" for s in scores or []) + " | "
           + " | ".join(f"{s} flagged (test)" for s in scores or [])
           + " | pooled with the test split: accuracy all -> kept |",
           "| --- | --- |" + " --- |" * (2 * len(scores or []) + 1)]
  means = {s: [] for s in scores or []}
  for name, ood in rows:
    if ood is None:
      lines.append(f"| {name} | no OOD section (evaluated before it existed) |")
      continue
    cells = []
    for s in scores:
      value = ood["auroc"][s]["all"]
      means[s].append(value)
      cells.append(f"{value:.3f}")
    flags = [f"{100 * ood['flagged'][s]['all']:.0f} % ({100 * ood['flagged'][s]['reference']:.0f} %)"
             for s in scores]
    pooled = ood["selective"]["pooled"][ood["fit"]["score"]]
    lines.append(f"| {name} | {ood['selective']['this'][scores[0]]['images']} | "
                 + " | ".join(cells) + " | " + " | ".join(flags) + " | "
                 f"{ood['fit']['score']}: {pooled['accuracy_all']:.3f} -> "
                 f"{pooled['accuracy_kept']:.3f} ({100 * pooled['kept']:.0f} % kept) |")
  lines += ["", "Mean AUROC over held-out sources: " + ", ".join(
      f"{s} {sum(v) / len(v):.3f} (min {min(v):.3f})" for s, v in means.items() if v)]
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  print(main(Path(sys.argv[1]), *sys.argv[2:3]))
