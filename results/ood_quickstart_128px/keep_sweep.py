"""How the share of validation images kept (config.eval.ood_keep, 0.95 by default) trades
in-distribution images flagged against other collections flagged, for knn_blocks, on the cache
moments.py writes. Choose on cxr-plus (collections a cxr3-only model never saw, not
evaluation-only); cxr-external is printed for the report, never for the choice.

  PYTHONPATH=$PWD .venv/bin/python results/ood_quickstart_128px/keep_sweep.py CACHE.npz > keep_sweep.md
"""
import sys

import numpy as np

from cxr_jax.evaluate import ood

z = np.load(sys.argv[1])
get = lambda t, k: z[f"{t}/{k}"]
tags = ["train", "val", "test"] + [t for t in ("cxr-plus", "cxr-external") if f"{t}/labels" in z.files]
BLOCKS = (1, 2, 3, 4, 5)
KEEPS = (0.99, 0.975, 0.95, 0.925, 0.90, 0.85, 0.80)


def outputs(t):
  return {"input": get(t, "thumbnail"), "blocks": {b: get(t, f"block{b}_mean") for b in BLOCKS}}


centre = get("train", "thumbnail").mean(axis=0)
bank = ood.input_and_blocks(outputs("train"), centre, BLOCKS)
score = {t: ood.knn_score(ood.input_and_blocks(outputs(t), centre, BLOCKS), bank, 10)
         for t in tags[1:]}
correct = {t: get(t, "logits").argmax(1) == get(t, "labels") for t in tags[1:]}
groups = [(t, s, get(t, "sources") == s) for t in tags[3:] for s in sorted(set(get(t, "sources")))]

print(f"knn_blocks (k = 10): share flagged at the threshold keeping a share of the {len(score['val'])} "
      "validation images\n")
head = ["keep (validation)", "test split"] + [f"{t}: {s}" for t, s, _ in groups]
pooled = "cxr-external" in score
if pooled:
  head.append("test + cxr-external: accuracy on kept (kept)")
print("| " + " | ".join(head) + " |\n|" + " --- |" * len(head))
for keep in KEEPS:
  thr = ood.threshold_keeping(score["val"], keep)
  cells = [f"{keep:.3f}", f"{100 * np.mean(score['test'] > thr):.0f} %"]
  cells += [f"{100 * np.mean(score[t][m] > thr):.0f} %" for t, _, m in groups]
  if pooled:
    s = np.concatenate([score["test"], score["cxr-external"]])
    c = np.concatenate([correct["test"], correct["cxr-external"]])
    kept = s <= thr
    cells.append(f"{c[kept].mean():.3f} ({100 * kept.mean():.0f} %)")
  print("| " + " | ".join(cells) + " |")
