"""knn_blocks against one bank per training source (stop 44): is an image typical of at least one
source the model saw? The minimum over sources of its k-th-nearest distance within each source's
bank, raw or divided by that source's own spread (the median or 95th percentile of its training
images' leave-one-out distances), against the one bank of every training image (knn_blocks).
Chosen on cxr-plus; cxr-external printed for the report. On the cache moments.py writes:

  PYTHONPATH=$PWD .venv/bin/python results/ood_quickstart_128px/per_source.py CACHE.npz > per_source.md
"""
import sys

import numpy as np

from cxr_jax.evaluate import ood

z = np.load(sys.argv[1])
get = lambda t, k: z[f"{t}/{k}"]
tags = ["train", "val", "test"] + [t for t in ("cxr-plus", "cxr-external") if f"{t}/labels" in z.files]
BLOCKS = (1, 2, 3, 4, 5)
centre = get("train", "thumbnail").mean(axis=0)
feat = {t: ood.block_rows({**{b: get(t, f"block{b}_mean") for b in BLOCKS},
                           0: get(t, "thumbnail") - centre}, (0,) + BLOCKS) for t in tags}
src = {t: get(t, "sources") for t in tags}
groups = [(t, s, src[t] == s) for t in tags[3:] for s in sorted(set(src[t]))]
sources = sorted(set(src["train"]))


def row(name, sc):
  thr = ood.threshold_keeping(sc["val"], 0.95)
  cells = [f"{ood.auroc(sc['test'], sc[t][m]):.3f} ({100 * np.mean(sc[t][m] > thr):.0f} %)"
           for t, _, m in groups]
  print(f"| {name} | " + " | ".join(cells) + f" | {100 * np.mean(sc['test'] > thr):.0f} % |")


print("Training images per source: " + ", ".join(f"{s} {int(np.sum(src['train'] == s))}" for s in sources)
      + ".\n\nAUROC against the test split (share flagged at the threshold keeping 95 % of validation)\n")
print("| score | " + " | ".join(f"{t}: {s}" for t, s, _ in groups) + " | test flagged |")
print("|" + " --- |" * (len(groups) + 2))
row("knn_blocks, one bank, k=10", {t: ood.knn_score(feat[t], feat["train"], 10) for t in tags[1:]})
for k_name, k_of in (("k=10 (at most a quarter of the source)", lambda n: min(10, max(1, n // 4))),
                     ("k=5", lambda n: min(5, n)), ("k=1", lambda n: 1)):
  for norm in ("raw", "median", "q95"):
    per = {t: [] for t in tags[1:]}
    for s in sources:
      bank = feat["train"][src["train"] == s]
      k = k_of(len(bank))
      own = ood.knn_score(bank, bank, min(k + 1, len(bank)))  # leave-one-out: itself is nearest
      scale = {"raw": 1.0, "median": np.median(own), "q95": np.quantile(own, 0.95)}[norm]
      for t in per:
        per[t].append(ood.knn_score(feat[t], bank, k) / scale)
    row(f"per-source banks, {k_name}, {norm}, minimum", {t: np.min(per[t], axis=0) for t in per})
