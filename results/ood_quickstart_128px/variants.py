"""The score variants tried for the sixth score (stop 39), on the cache moments.py writes:
per-block Mahalanobis on the pooled means (the five-block ensemble's parts), on the per-channel
spatial standard deviations (second moments), on both, and knn over sets of blocks, each told
apart from the run's test split; and thresholds per predicted class for knn over every block.
The choice reads cxr-plus only (collections a cxr3-only model never saw and that are not
evaluation-only data); cxr-external is printed for the report.

  PYTHONPATH=$PWD .venv/bin/python results/ood_quickstart_128px/variants.py CACHE.npz > variants.md
"""
import sys

import numpy as np

from cxr_jax.evaluate import ood

z = np.load(sys.argv[1])
get = lambda t, k: z[f"{t}/{k}"]
tags = ["val", "test"] + [t for t in ("cxr-plus", "cxr-external") if f"{t}/labels" in z.files]
BLOCKS = (1, 2, 3, 4, 5)
groups = [(t, s, get(t, "sources") == s) for t in tags[2:] for s in sorted(set(get(t, "sources")))]


def features(t, kind, b):
  m, s = get(t, f"block{b}_mean"), get(t, f"block{b}_std")
  return dict(mean=m, std=s, both=np.concatenate([m, s], 1))[kind]


def row(name, sc):
  thr = ood.threshold_keeping(sc["val"], 0.95)
  cells = [f"{ood.auroc(sc['test'], sc[t][m]):.3f} ({100 * np.mean(sc[t][m] > thr):.0f} %)"
           for t, _, m in groups]
  print(f"| {name} | " + " | ".join(cells) + f" | {100 * np.mean(sc['test'] > thr):.0f} % |")


print("AUROC against the test split (share flagged at the threshold keeping 95 % of validation)\n")
print("| score | " + " | ".join(f"{t}: {s}" for t, s, _ in groups) + " | test flagged |")
print("|" + " --- |" * (len(groups) + 2))
labels = get("train", "labels")
for kind in ("mean", "std", "both"):
  per = {t: [] for t in tags}
  for b in BLOCKS:
    means, precision, _ = ood.shared_gaussian(features("train", kind, b), labels, 3)
    for t in tags:
      per[t].append(ood.mahalanobis_score(features(t, kind, b), means, precision) / len(precision))
    row(f"mahalanobis {kind}, block{b}", {t: per[t][-1] for t in tags})
  row(f"mahalanobis {kind}, mean of 5 blocks", {t: np.mean(per[t], 0) for t in tags})


def block_rows(t, kind, blocks):
  return ood.block_rows({b: features(t, kind, b) for b in blocks}, blocks)


for kind in ("mean", "both"):
  for blocks in ((5,), BLOCKS, (2, 3, 4), (3, 4, 5)):
    bank = block_rows("train", kind, blocks)
    for k in (1, 10, 50):
      row(f"knn {kind}, blocks {''.join(map(str, blocks))}, k={k}",
          {t: ood.knn_score(block_rows(t, kind, blocks), bank, k) for t in tags})

if "train/thumbnail" in z.files:   # the input itself, before any learnt filter
  thumbs = {t: get(t, "thumbnail") for t in tags + ["train"]}
  centre = thumbs["train"].mean(axis=0)
  for k in (1, 10):
    row(f"knn, input 16 x 16 thumbnail (centred), k={k}",
        {t: ood.knn_score(thumbs[t] - centre, ood.unit_rows(thumbs["train"] - centre), k)
         for t in tags})
  parts = lambda t: {**{b: features(t, "mean", b) for b in BLOCKS}, 0: thumbs[t] - centre}
  bank = ood.block_rows(parts("train"), (0,) + BLOCKS)
  row("knn, thumbnail and 5 blocks, k=10",
      {t: ood.knn_score(ood.block_rows(parts(t), (0,) + BLOCKS), bank, 10) for t in tags})

print("\nknn over every block (k=10), one threshold or one per predicted class (each keeping 95 % "
      "of the validation images predicted that class): share flagged\n")
bank = block_rows("train", "mean", BLOCKS)
sc = {t: ood.knn_score(block_rows(t, "mean", BLOCKS), bank, 10) for t in tags}
pred = {t: get(t, "logits").argmax(1) for t in tags}
one = ood.threshold_keeping(sc["val"], 0.95)
per_class = np.array([ood.threshold_keeping(sc["val"][pred["val"] == c], 0.95) for c in range(3)])
print("| set | images | one threshold | per predicted class |\n| --- | --- | --- | --- |")
for t, s, m in [("test", "test split", slice(None))] + groups:
  print(f"| {t}: {s} | {np.ones(len(sc[t]))[m].sum():.0f} | {100 * np.mean(sc[t][m] > one):.0f} % | "
        f"{100 * np.mean(sc[t][m] > per_class[pred[t][m]]):.0f} % |")
