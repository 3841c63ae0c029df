"""Markdown AUROC table from score .npz files written by score.py (no timings):
  PYTHONPATH=$PWD python table.py CACHE_DIR OOD_TAG SCORES.npz..."""
import sys
from pathlib import Path

import numpy as np

from cxr_jax.evaluate import ood

cache, tag = Path(sys.argv[1]), sys.argv[2]
src = np.load(cache / f"{tag}.npz")["sources"]
for f in sys.argv[3:]:
  s = np.load(f)
  for v in dict.fromkeys(k.rsplit("/", 1)[0] for k in s.files):
    if f"{v}/{tag}" not in s.files:
      continue
    thr = ood.threshold_keeping(s[f"{v}/val"], 0.95)
    t, o = s[f"{v}/test"], s[f"{v}/{tag}"]
    cells = [f"{ood.auroc(t, o[src == k]):.3f} ({100 * np.mean(o[src == k] > thr):.0f} %)"
             for k in sorted(set(src))]
    print(f"| {v} | " + " | ".join(cells) + f" | {100 * np.mean(t > thr):.0f} % |")
