"""Patch-level (spatial) feature maps + acquisition statistics + knn_blocks' parts of a run's
train / val / test splits and of other collections, one .npz per tag, for score.py.

  PYTHONPATH=$PWD .venv/bin/python results/ood_quickstart_128px/patch_scores/extract.py \
      workdirs/quickstart /tmp/ood_patch_cache [--cap N] splits|SPEC...

Per image (float16 maps):
  b2a: block2 (32x32x128) 3x3 locally averaged, then 2x2 mean-pooled -> 16x16x128
  b2r: block2 without local averaging, every other row/column      -> 16x16x128
  b3a/b3r: block3 (16x16x256) with / without 3x3 averaging, fixed random orthonormal proj -> 128
  b4a/b4r: block4 (8x8x512)  with / without 3x3 averaging, fixed random orthonormal proj -> 128
  thumbnail (16x16 of input channel 0), block{1..5}_mean (knn_blocks' parts), logits
  quant: 33 quantiles of the input's channel 0 (an intensity histogram's cumulative form),
  psd: log radially averaged power spectrum of the input's channel 0 (64 radial bins)
"""
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax import data
from cxr_jax.data.records import NO_LABEL
from cxr_jax.evaluate import external, inference
from cxr_jax.evaluate.run import LoadedRun, LoadedSplit, data_batches

args = sys.argv[1:]
cap = 0
if "--cap" in args:
  i = args.index("--cap")
  cap = int(args[i + 1])
  args = args[:i] + args[i + 2:]
workdir, outdir, specs = Path(args[0]), Path(args[1]), args[2:]
outdir.mkdir(parents=True, exist_ok=True)
run = LoadedRun.from_workdir(workdir)
model, names = run.model, inference.stage_names(run.model)

rng = np.random.default_rng(0)
PROJ = {c: jnp.asarray(np.linalg.qr(rng.standard_normal((c, 128)))[0], jnp.float32)
        for c in (256, 512)}


def avg3(x):
  """3x3 mean over the spatial neighbourhood (stride 1, borders average what exists)."""
  ones = jnp.ones(x.shape[:3] + (1,), x.dtype)
  win, st = (1, 3, 3, 1), (1, 1, 1, 1)
  s = jax.lax.reduce_window(x, 0.0, jax.lax.add, win, st, "SAME")
  c = jax.lax.reduce_window(ones, 0.0, jax.lax.add, win, st, "SAME")
  return s / c


def pool2(x):
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


S = 128
yy, xx = np.meshgrid(np.arange(S) - S // 2, np.arange(S) - S // 2, indexing="ij")
RAD = np.minimum((np.sqrt(yy ** 2 + xx ** 2)).astype(int), 63).reshape(-1)
RADM = jnp.asarray(np.eye(64)[RAD], jnp.float32)          # [S*S, 64] one-hot radial bins
RADM = RADM / RADM.sum(0, keepdims=True)


@jax.jit
def features(variables, images):
  x, start, res = images, "input", {}
  n, h, w, _ = images.shape
  g = images[..., 0].astype(jnp.float32)
  res["thumbnail"] = g.reshape(n, 16, h // 16, 16, w // 16).mean(axis=(2, 4)).reshape(n, 256)
  res["quant"] = jnp.quantile(g.reshape(n, -1), jnp.linspace(0, 1, 33), axis=1).T
  f = jnp.fft.fftshift(jnp.fft.fft2(g - g.mean(axis=(1, 2), keepdims=True)), axes=(1, 2))
  res["psd"] = jnp.log((jnp.abs(f) ** 2).reshape(n, -1) @ RADM + 1e-6)
  for name in names:
    x = model.apply(variables, x, train=False, start=start, stop=name)
    start = name
    xf = x.astype(jnp.float32)
    res[name + "_mean"] = xf.mean(axis=(1, 2))
    if name == "block2":
      res["b2a"] = pool2(avg3(xf)).astype(jnp.float16)
      res["b2r"] = xf[:, ::2, ::2].astype(jnp.float16)
    elif name == "block3":
      res["b3a"] = (avg3(xf) @ PROJ[256]).astype(jnp.float16)
      res["b3r"] = (xf @ PROJ[256]).astype(jnp.float16)
    elif name == "block4":
      res["b4a"] = (avg3(xf) @ PROJ[512]).astype(jnp.float16)
      res["b4r"] = (xf @ PROJ[512]).astype(jnp.float16)
  res["logits"] = model.apply(variables, x, train=False, start=start).astype(jnp.float32)
  return res


def over(tag, loaded, ids=None):
  t0 = time.time()
  outputs, labels, got = inference.run_batches(lambda x: features(run.variables, x),
                                               data_batches(loaded, run.batch_size, ids))
  arrays = {k: v for k, v in outputs.items()}
  arrays["labels"] = labels
  arrays["sources"] = np.asarray(loaded.built.metadata["source"][got]).astype(str)
  dt = time.time() - t0
  arrays["seconds_per_image"] = np.float64(dt / len(labels))
  np.savez(outdir / f"{tag}.npz", **arrays)
  print(tag, len(labels), f"{dt:.0f}s", {k: v.shape for k, v in arrays.items() if k[0] == "b"},
        flush=True)


for spec in specs:
  if spec == "splits":
    for split in ("train", "val", "test"):
      over(split, run.split(split))
    continue
  config = external.external_data_config(run.trained.config, spec)
  built = data.build_dataset(config.data, every_class=False)
  meta = built.metadata
  ids = np.asarray(meta["id"][meta["label"] != NO_LABEL])
  if cap:   # at most `cap` images per source, fixed seed
    src = np.asarray(meta["source"][ids]).astype(str)
    pick = np.random.default_rng(0)
    ids = np.sort(np.concatenate([
        (lambda s: pick.choice(s, min(cap, len(s)), replace=False))(ids[src == s])
        for s in sorted(set(src))]))
  over(external.external_name(spec), LoadedSplit(run.trained, config, built, ids), ids)
