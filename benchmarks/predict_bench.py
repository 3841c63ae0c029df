"""`python -m cxr_jax.predict` speed: one image cold (process start included) and warm throughput
over many files, against the forward pass's ceiling from this machine's fp32 matmul speed.

  python benchmarks/predict_bench.py --image-size 128 --files 256 --out benchmarks/results/predict_128.json

The run is a saved VGG16 model with random weights at --image-size (speed does not depend on the
weights) in the default config (conv_impl auto, quick-start head). Cold: `python -m cxr_jax.predict`
on one cxr3 image in a fresh process, first with an empty compilation cache, then again with the
cache it left. Warm: `cxr_jax.predict.predict_files` in this process over --files cxr3 images
(decoding, CLAHE and resizing included, as a user gets them) after one warm-up batch. Ceiling:
VGG16's forward FLOPs per image at this size / the measured 2048^3 fp32 matmul GFLOP/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import vs_pytorch  # noqa: E402
from cxr_jax import host_memory, machine  # noqa: E402


def forward_flops(size: int) -> int:
  """VGG16's convolution FLOPs for one image's forward pass (the head is negligible)."""
  return vs_pytorch.step_flops(size, 1, 0)["forward"]


def saved_run(size: int, path: Path) -> Path:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from configs import quickstart
  from cxr_jax import checkpoint, models

  config = quickstart.get_config()
  config.data.image_size = size
  config.model.pretrained = "none"
  model = models.create_model(config.model)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))["params"]
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(0, 0.02, s.shape).astype(np.float32), shapes)
  checkpoint.save_trained(path, config, {"params": params}, "torchvision")
  return path


def cold_run(workdir: Path, image: str, cache: Path) -> float:
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache))
  t0 = time.perf_counter()
  done = subprocess.run([sys.executable, "-m", "cxr_jax.predict", f"--workdir={workdir}", image],
                        cwd=REPO, env=env, capture_output=True, text=True)
  seconds = time.perf_counter() - t0
  if done.returncode:
    raise SystemExit(f"predict failed: {done.stderr[-2000:]}")
  return round(seconds, 2)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--image-size", type=int, default=128)
  ap.add_argument("--files", type=int, default=256)
  ap.add_argument("--batch-size", type=int, default=32)
  ap.add_argument("--out", type=Path)
  args = ap.parse_args(argv)
  host_memory.configure("auto")  # as predict's main does, before JAX starts

  from cxr_jax import paths, predict

  scratch = Path(tempfile.mkdtemp(prefix="predict_bench_"))
  files = sorted(str(p) for p in paths.default_data_root().rglob("*")
                 if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:args.files]
  workdir = saved_run(args.image_size, scratch / "run")
  cache = scratch / "jax_cache"
  cold = {"empty_compilation_cache_s": cold_run(workdir, files[0], cache),
          "warm_compilation_cache_s": cold_run(workdir, files[0], cache)}
  predict.predict_files(workdir, files[:args.batch_size], batch_size=args.batch_size)  # warm-up
  t0 = time.perf_counter()
  results = predict.predict_files(workdir, files, batch_size=args.batch_size)
  seconds = time.perf_counter() - t0
  assert not any("error" in r for r in results)
  gflops = vs_pytorch.jax_matmul_gflops("float32")
  ceiling = gflops * 1e9 / forward_flops(args.image_size)
  warm = len(files) / seconds
  result = {"machine": machine.describe(), "image_size": args.image_size, "files": len(files),
            "batch_size": args.batch_size, "cold_one_image": cold,
            "warm_images_per_s": round(warm, 2), "fp32_matmul_gflops": round(gflops, 1),
            "forward_gflop_per_image": round(forward_flops(args.image_size) / 1e9, 2),
            "ceiling_images_per_s": round(ceiling, 2), "warm_share_of_ceiling": round(warm / ceiling, 3),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
  print(json.dumps(result, indent=2))
  if args.out:
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
  main()
