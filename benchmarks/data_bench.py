"""Data layer throughput on cxr3: TFDS build (images/s) at 224 and 800 px, input pipeline at 224 px.

  .venv/bin/python benchmarks/data_bench.py [--sizes 224 800] [--out benchmarks/results/data_bench.json]

Each build goes into a fresh temporary data dir (nothing reused). The pipeline is timed over
one training epoch read cold (PNG decode + cache fill) and one warm (from the memory cache).
"cold" includes reading and decoding the split's PNGs; "warm" is shuffle, normalisation to
float32 [H, W, 3] and batching only. The machine is shared: the load average before and after
is recorded with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # configs/ lives at the root

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pydicom  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

import cxr_jax.weights  # noqa: E402,F401  (imports jax; kept out of the pipeline timing)
from configs.default import get_config  # noqa: E402
from cxr_jax import data, paths  # noqa: E402
from cxr_jax import machine as machine_facts  # noqa: E402


def machine() -> dict:
  return dict(machine_facts.describe(), tensorflow=tf.__version__, tfds=tfds.__version__,
              opencv=cv2.__version__, numpy=np.__version__, pydicom=pydicom.__version__)


def bench_build(size: int, data_dir: str, workers: int | None) -> tuple[dict, object]:
  d = get_config().data
  d.image_size, d.data_dir = size, data_dir
  start = time.perf_counter()
  with contextlib.redirect_stdout(sys.stderr):  # TFDS prints progress to stdout.
    built = data.build_dataset(d, num_workers=workers)
  seconds = time.perf_counter() - start
  return dict(image_size=size, images=built.num_examples, seconds=round(seconds, 2),
              images_per_s=round(built.num_examples / seconds, 1), workers=workers or os.cpu_count(),
              dataset=built.version), built


def bench_pipeline(built, batch_size: int) -> dict:
  d = get_config().data
  d.image_size = built.image_size
  ids = data.make_splits(built.metadata, d)["train"]
  out = dict(image_size=built.image_size, batch_size=batch_size, split="train", images=len(ids))
  for epoch, name in enumerate(("cold", "warm")):
    start, n = time.perf_counter(), 0
    for batch in data.make_dataset(built, ids, batch_size=batch_size, num_devices=1,
                                   preprocessing="torchvision", train=True, seed=0, epoch=epoch,
                                   data_config=d):
      n += batch["mask"].size
    seconds = time.perf_counter() - start
    out[name] = dict(images=n, seconds=round(seconds, 2), images_per_s=round(n / seconds, 1))
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--sizes", type=int, nargs="+", default=[224, 800])
  p.add_argument("--pipeline_size", type=int, default=224)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--workers", type=int, default=None, help="decode threads (default: cores)")
  p.add_argument("--out", default=str(Path(__file__).parent / "results" / "data_bench.json"))
  args = p.parse_args()
  result = dict(benchmark="data_bench", time_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                machine=machine(), data=str(paths.default_data_root()),
                load_average_before=os.getloadavg(), build=[], pipeline=None)
  with tempfile.TemporaryDirectory() as tmp:
    for size in args.sizes:
      stats, built = bench_build(size, f"{tmp}/s{size}", args.workers)
      print(json.dumps(stats), file=sys.stderr)
      result["build"].append(stats)
      if size == args.pipeline_size:
        result["pipeline"] = bench_pipeline(built, args.batch_size)
        print(json.dumps(result["pipeline"]), file=sys.stderr)
  result["load_average_after"] = os.getloadavg()
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
