"""Aggregation diagnostics on saved patch distance maps (score.py --maps): where the max patch
lies, and image scores from the central region only / quantiles.
  PYTHONPATH=$PWD python agg.py CACHE_DIR OOD_TAG MAPS.npz..."""
import sys
from pathlib import Path

import numpy as np

from cxr_jax.evaluate import ood

cache, tag = Path(sys.argv[1]), sys.argv[2]
src = np.load(cache / f"{tag}.npz")["sources"]
for f in sys.argv[3:]:
  m = {k: v.astype(np.float32) for k, v in np.load(f).items()}
  g = int(round(np.sqrt(m["test"].shape[1])))
  print(f"\n{Path(f).name} ({g}x{g})")
  for t in ("test", tag):
    am = m[t].argmax(1)
    r, c = am // g, am % g
    edge = np.minimum(np.minimum(r, g - 1 - r), np.minimum(c, g - 1 - c))
    print(f"  {t}: share of images whose max patch is in the outer 2 rings: "
          f"{np.mean(edge < 2):.2f} (outer 2 rings are {1 - ((g - 4) / g) ** 2:.2f} of cells)")
  for border in (0, 2, 4):
    keep = np.zeros((g, g), bool)
    keep[border:g - border, border:g - border] = True
    for how in ("max", "q90", "median", "mean"):
      sc = {}
      for t in ("val", "test", tag):
        x = m[t].reshape(-1, g, g)[:, keep]
        sc[t] = dict(max=x.max(1), q90=np.quantile(x, 0.9, 1), median=np.median(x, 1),
                     mean=x.mean(1))[how]
      thr = ood.threshold_keeping(sc["val"], 0.95)
      cells = [f"{ood.auroc(sc['test'], sc[tag][src == k]):.3f} "
               f"({100 * np.mean(sc[tag][src == k] > thr):.0f} %)" for k in sorted(set(src))]
      print(f"  | border {border}, {how} | " + " | ".join(cells) +
            f" | {100 * np.mean(sc['test'] > thr):.0f} % |")
