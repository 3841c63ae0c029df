"""PatchCore-style patch scores, acquisition-statistics kNN and the knn_blocks baseline, on the
per-tag caches extract.py writes. The bank / fit reads the train split only; thresholds keep 95 %
of val; every AUROC is test split (inside) vs one source of an OOD collection (outside).

  PYTHONPATH=$PWD .venv/bin/python results/ood_quickstart_128px/patch_scores/score.py CACHE_DIR OUT.npz \
      OOD_TAG[,OOD_TAG...] [VARIANT ...]      (no VARIANT: the sweep below)

Writes OUT.npz (every variant's scores per tag) and prints a markdown table.
"""
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.evaluate import ood

cache, out, ood_tags = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split(",")
only = [a for a in sys.argv[4:] if a != "--maps"]
SAVE_MAPS = "--maps" in sys.argv   # also keep each variant's patch distance maps (float16)
TAGS = ["val", "test"] + ood_tags
Z = {t: np.load(cache / f"{t}.npz") for t in ["train"] + TAGS}
groups = [(t, s, Z[t]["sources"] == s) for t in ood_tags for s in sorted(set(Z[t]["sources"]))]
fwd_s = float(Z["train"]["seconds_per_image"])   # extraction (load + forward) per image, CPU


def patches(t, key):
  """[N, P, D] float32 patch features of tag t; key 'b2a', ..., or 'b2a+b3a' (channel concat at
  the common 16x16 grid)."""
  parts = [Z[t][k].astype(np.float32) for k in key.split("+")]
  x = np.concatenate(parts, axis=-1)
  return x.reshape(x.shape[0], -1, x.shape[-1])


def coreset(x, m, seed=0):
  """Greedy (farthest point) coreset of m rows of x (PatchCore's approximate greedy coreset:
  distances in a fixed random 64-dim projection)."""
  rng = np.random.default_rng(seed)
  p = x @ (rng.standard_normal((x.shape[1], 64)) / 8.0).astype(np.float32)
  p = jnp.asarray(p)

  def body(i, state):
    sel, mind, last = state
    d = jnp.sum((p - p[last]) ** 2, axis=1)
    mind = jnp.minimum(mind, d)
    nxt = jnp.argmax(mind)
    return sel.at[i].set(nxt), mind, nxt

  first = int(rng.integers(len(x)))
  sel = jnp.zeros(m, jnp.int32).at[0].set(first)
  sel, _, _ = jax.jit(lambda s, f: jax.lax.fori_loop(
      1, m, body, (s, jnp.full(len(x), jnp.inf, jnp.float32), f)))(sel, jnp.int32(first))
  return np.asarray(sel)


def nn_dist(q, bank, chunk=8192):
  """Euclidean distance of each row of q [Q, D] to its nearest row of bank [B, D]."""
  bb = (bank * bank).sum(1)
  bt = np.ascontiguousarray(bank.T)
  res = np.empty(len(q), np.float32)
  for i in range(0, len(q), chunk):
    c = q[i:i + chunk]
    d = (c * c).sum(1, keepdims=True) + bb[None] - 2.0 * (c @ bt)
    res[i:i + chunk] = np.sqrt(np.maximum(d.min(1), 0))
  return res


def patchcore(key, bank_size, sampler="random", unit=False):
  """Per-tag patch distance maps [N, P] to the nearest train-bank patch; and the bank's size."""
  tr = patches("train", key)
  tr = tr.reshape(-1, tr.shape[-1])
  if unit:
    tr = tr / np.linalg.norm(tr, axis=1, keepdims=True).clip(1e-6)
  m = min(bank_size, len(tr))
  t0 = time.time()
  if sampler == "random":
    idx = np.random.default_rng(0).choice(len(tr), m, replace=False)
  else:
    idx = coreset(tr, m)
  bank = tr[idx]
  t_bank = time.time() - t0
  maps, t0, nimg = {}, time.time(), 0
  for t in TAGS:
    x = patches(t, key)
    n, p, d = x.shape
    x = x.reshape(-1, d)
    if unit:
      x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-6)
    maps[t] = nn_dist(x, bank).reshape(n, p)
    nimg += n
  return maps, m, t_bank, (time.time() - t0) / nimg


def grid(t, key):
  parts = [Z[t][k].astype(np.float32) for k in key.split("+")]
  return np.concatenate(parts, axis=-1)   # [N, G, G, D]


def per_cell(key, fit):
  """Maps [N, G*G]: every grid cell's patches scored by fit(train patches [N, G, G, D], i, j),
  which returns the cell's scorer (patches [n, D] -> [n]); and the time per image."""
  tr = grid("train", key)
  g = tr.shape[1]
  xs = {t: grid(t, key) for t in TAGS}
  maps = {t: np.zeros((len(xs[t]), g, g), np.float32) for t in TAGS}
  t0 = time.time()
  for i in range(g):
    for j in range(g):
      score = fit(tr, i, j)
      for t in TAGS:
        maps[t][:, i, j] = score(xs[t][:, i, j])
  n = sum(len(x) for x in xs.values())
  return {t: m.reshape(len(m), -1) for t, m in maps.items()}, (time.time() - t0) / n


def posknn(key, r=1):
  """Position-aware patch kNN: each patch against the train patches at the same grid cell and
  its (2r+1)^2 neighbours only (the films are roughly aligned). Maps [N, G*G]."""
  def fit(tr, i, j):
    bank = tr[:, max(i - r, 0):i + r + 1, max(j - r, 0):j + r + 1].reshape(-1, tr.shape[-1])
    return lambda x: nn_dist(x, bank)
  maps, per_image = per_cell(key, fit)
  return maps, len(grid("train", key)) * (2 * r + 1) ** 2, 0.0, per_image


def padim(key):
  """PaDiM-style: a Gaussian per grid cell (train mean, Ledoit-Wolf covariance); per-patch
  Mahalanobis distance. Maps [N, G*G]."""
  from sklearn.covariance import LedoitWolf

  def fit(tr, i, j):
    f = tr[:, i, j].astype(np.float64)
    mu = f.mean(0)
    prec = np.linalg.inv(LedoitWolf().fit(f - mu).covariance_)
    return lambda x: np.sqrt(np.einsum("nd,de,ne->n", x - mu, prec, x - mu))
  maps, per_image = per_cell(key, fit)
  g = grid("train", key).shape[1]
  return maps, g * g, 0.0, per_image


def aggregate(m, how):
  if how == "max":
    return m.max(1)
  if how.startswith("top"):
    k = int(how[3:])
    return np.sort(m, axis=1)[:, -k:].mean(1)
  return m.mean(1)


def standardised(key):
  cut = slice(1, None) if key == "psd" else slice(None)   # psd bin 0 is DC (mean removed)
  tr = Z["train"][key][:, cut].astype(np.float64)
  mu, sd = tr.mean(0), tr.std(0) + 1e-6
  return {t: (Z[t][key][:, cut] - mu) / sd for t in ["train"] + TAGS}


def knn_parts(parts, k=10):
  """knn over unit-normalised, concatenated parts ({name: {tag: [N, F]}}), bank = train."""
  rows = lambda t: ood.block_rows({n: p[t] for n, p in parts.items()}, list(parts))
  bank = rows("train")
  t0 = time.time()
  sc = {t: ood.knn_score(rows(t), bank, k) for t in TAGS}
  return sc, len(bank), (time.time() - t0) / sum(len(s) for s in sc.values())


def blocks_parts():
  centre = Z["train"]["thumbnail"].mean(0)
  parts = {"thumb": {t: Z[t]["thumbnail"] - centre for t in ["train"] + TAGS}}
  for b in range(1, 6):
    parts[f"b{b}"] = {t: Z[t][f"block{b}_mean"] for t in ["train"] + TAGS}
  return parts


results, rows_out = {}, []


def row(name, sc, bank, sec):
  thr = ood.threshold_keeping(sc["val"], 0.95)
  cells = [f"{ood.auroc(sc['test'], sc[t][m]):.3f} ({100 * np.mean(sc[t][m] > thr):.0f} %)"
           for t, _, m in groups]
  line = (f"| {name} | " + " | ".join(cells) + f" | {100 * np.mean(sc['test'] > thr):.0f} % | "
          f"{bank} | {1000 * (sec + fwd_s):.0f} ms ({1000 * sec:.1f}) |")
  print(line, flush=True)
  rows_out.append(line)
  results.update({f"{name}/{t}": sc[t] for t in TAGS})
  np.savez(out, **results)


print("| variant | " + " | ".join(f"{t}: {s}" for t, s, _ in groups)
      + " | test flagged | bank | ms / image (score part) |")
print("|" + " --- |" * (len(groups) + 4), flush=True)


def want(name):
  # a trailing "$" asks for the exact name, else a prefix
  return not only or any(name == o[:-1] if o.endswith("$") else name.startswith(o) for o in only)


# Baseline: knn_blocks (thumbnail + 5 pooled blocks, k=10).
base = None
if want("knn_blocks"):
  base, nb, sec = knn_parts(blocks_parts())
  row("knn_blocks", base, nb, sec)

# Acquisition statistics: intensity quantiles + radial power spectrum (standardised on train).
if want("acq"):
  acq = {"quant": standardised("quant"), "psd": standardised("psd")}
  row("acq: quantiles+psd, k=10", *knn_parts(acq))
  row("acq: psd, k=10", *knn_parts({"psd": acq["psd"]}))
  row("acq + knn_blocks parts, k=10", *knn_parts({**blocks_parts(), **acq}))


def combo_z(sa, sb):
  """Sum of two scores, each standardised by its val mean / sd."""
  mv = lambda s: (np.mean(s["val"]), np.std(s["val"]))
  (ma, da), (mb, db) = mv(sa), mv(sb)
  return {t: (sa[t] - ma) / da + (sb[t] - mb) / db for t in TAGS}


SWEEP = [  # key, bank size, sampler, unit-normalised patches
    ("b3a", 10000, "random", False),
    ("b3r", 10000, "random", False),
    ("b2a", 10000, "random", False),
    ("b2r", 10000, "random", False),
    ("b4a", 10000, "random", False),
    ("b4r", 10000, "random", False),
    ("b2a+b3a", 10000, "random", False),
    ("b3a", 10000, "coreset", False),
    ("b3a", 40000, "random", False),
    ("b3a", 10000, "random", True),
    ("b2a", 10000, "random", True),
    ("b4a", 10000, "random", True),
]
POS = [(k, b, None, None) for k, b in [
    ("posknn", "b3a"), ("padim", "b3a"), ("posknn", "b2a"), ("padim", "b2a"),
    ("posknn", "b4a"), ("padim", "b4a"), ("padim", "b3r"), ("padim", "b2a+b3a")]]
for key, size, sampler, unit in SWEEP + POS:
  if key in ("posknn", "padim"):
    kind, key = key, size
    name = f"{kind} {key}"
  else:
    name = f"patchcore {key}, {sampler} {size // 1000}k{', unit' if unit else ''}"
  if not want(name):
    continue
  if name.startswith("posknn"):
    maps, nb, t_bank, sec = posknn(key)
  elif name.startswith("padim"):
    maps, nb, t_bank, sec = padim(key)
  else:
    maps, nb, t_bank, sec = patchcore(key, size, sampler, unit)
  if SAVE_MAPS:
    np.savez(out.with_name(out.stem + "_maps_" + name.replace(" ", "").replace(",", "_") + ".npz"),
             **{t: m.astype(np.float16) for t, m in maps.items()})
  for how in ("max", "top10", "mean"):
    row(f"{name}, {how}", {t: aggregate(maps[t], how) for t in TAGS}, nb, sec)
  if base is not None:
    row(f"{name}, top10 + knn_blocks (val z-sum)",
        combo_z({t: aggregate(maps[t], "top10") for t in TAGS}, base), nb, sec)
  print(f"<!-- bank build {t_bank:.0f}s -->", flush=True)
