"""`python -m cxr_jax.predict` speed: one image cold (process start included) and warm throughput
over many files, against the forward pass's ceiling from this machine's fp32 matmul speed.

  python benchmarks/predict_bench.py --image-size 128 --files 256 --out benchmarks/results/predict_128.json

The run is a saved VGG16 model with random weights at --image-size (speed does not depend on the
weights) in the default config (conv_impl auto, quick-start head). Cold: `python -m cxr_jax.predict`
on one cxr3 image in a fresh process, first with an empty compilation cache, then again with the
cache it left. Warm: `cxr_jax.predict.iter_predictions` in this process over --files cxr3 images
(decoding, CLAHE and resizing included, as a user gets them), with that compilation cache: the
stream's rate from its first results to its last (`warm_images_per_s`, what many files get), and
the whole call's rate with the workdir's loading and the cached compilation in it
(`call_images_per_s`, what this many files get). `forward_images_per_s`: the jitted forward pass
alone on one batch, to tell the decoding's share apart. The run holds an out-of-distribution fit
of the quick start's sizes (`stored_ood_fit`), so every prediction is scored and flagged as a
user's is (--no-ood: without one; --ood-image-size: one made at that size, whose scores read
each image decoded and run through the blocks again at it). Ceiling: VGG16's forward FLOPs per image
at this size / the measured 2048^3 matmul GFLOP/s in the forward pass's dtype (--dtype: float32, or
bfloat16 with float32 accumulation, `predict --dtype`).

  python benchmarks/predict_bench.py --image-size 224 --dtype bfloat16 --out benchmarks/results/predict_224_bf16.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import machine as bench_machine  # noqa: E402
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


def stored_ood_fit(workdir: Path, n_train: int = 960, image_size: int = 0) -> None:
  """An out-of-distribution fit of the quick start's sizes (its ~960 training images' 512 pooled
  features, VGG16's five blocks' widths; random values: speed does not depend on them) for the
  saved run's parameters, made at `image_size` (config.eval.ood_image_size; 0: the run's)."""
  import numpy as np

  from cxr_jax import checkpoint
  from cxr_jax.evaluate import inference, ood

  rng = np.random.default_rng(0)
  features = np.abs(rng.normal(size=(n_train, 512)))
  empty = dict(scores={s: np.zeros(0) for s in ood.SCORES}, correct=np.zeros(0, bool),
               sources=np.zeros(0, str))
  variables = checkpoint.load_trained(workdir).variables
  widths = {f"block{i + 1}": w for i, w in enumerate((64, 128, 256, 512, 512))}
  blocks = {b: (features[:3, :w], np.eye(w)) for b, w in widths.items()}
  thumbnails = rng.normal(size=(n_train, inference.THUMBNAIL ** 2))
  centre = thumbnails.mean(axis=0)
  bank_blocks = ood.input_and_blocks(
      {"input": thumbnails, "blocks": {b: features[:, :w] for b, w in widths.items()}},
      centre, widths)
  fit = ood.OodFit("mahalanobis", 0.95, 1.0, features[:3], np.eye(512), 0.1,
                   ood.unit_rows(features).astype(np.float32), bank_blocks.astype(np.float32),
                   centre, 10, blocks,
                   {s: 0.0 for s in ood.SCORES}, checkpoint.model_digest(variables), n_train, 240,
                   empty, 0.95, np.sort(rng.random(240)), np.sort(rng.random(240)), 0.5,
                   image_size=image_size)
  (workdir / checkpoint.OOD_FILE).write_bytes(fit.to_bytes())


def cold_run(workdir: Path, image: str, cache: Path, dtype: str) -> float:
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache))
  t0 = time.perf_counter()
  done = subprocess.run([sys.executable, "-m", "cxr_jax.predict", f"--workdir={workdir}", f"--dtype={dtype}",
                         image],
                        cwd=REPO, env=env, capture_output=True, text=True)
  seconds = time.perf_counter() - t0
  if done.returncode:
    raise SystemExit(f"predict failed: {done.stderr[-2000:]}")
  return round(seconds, 2)


def streaming_rates(workdir: Path, files: list[str], batch_size: int,
                    dtype: str) -> tuple[float, float]:
  """Images/s of the stream after its first result, and of the whole call."""
  from cxr_jax import predict

  t0 = time.perf_counter()
  stamps = []
  for r in predict.iter_predictions(workdir, files, batch_size=batch_size, dtype=dtype):
    assert "error" not in r, r
    stamps.append(time.perf_counter())
  # Results come a batch at a time: from the first batch's results to the last batch's.
  return (len(files) - batch_size) / (stamps[-1] - stamps[0]), len(files) / (stamps[-1] - t0)


def forward_rate(workdir: Path, batch_size: int, dtype: str, repeats: int = 8) -> float:
  import jax
  import numpy as np

  from cxr_jax import checkpoint
  from cxr_jax.evaluate import compute_variables, make_predict_fn

  trained = checkpoint.load_trained(workdir, dtype=dtype)
  size = int(trained.config.data.image_size)
  fn = make_predict_fn(trained.model)
  variables = compute_variables(trained.model, trained.variables)  # as predict: once per run
  x = np.zeros((batch_size, size, size, 3), np.float32)
  step = lambda: jax.block_until_ready(fn(variables, x))
  step()   # compiles
  return batch_size / vs_pytorch.timed(step, repeats)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--image-size", type=int, default=128)
  ap.add_argument("--files", type=int, default=256)
  ap.add_argument("--batch-size", type=int, default=32)
  ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  ap.add_argument("--skip-cold", action="store_true", help="no cold-start runs (time-boxed runs)")
  ap.add_argument("--out", type=Path)
  ap.add_argument("--no-ood", action="store_true", help="no out-of-distribution fit in the run")
  ap.add_argument("--ood-image-size", type=int, default=0, help="the fit's image size "
                  "(config.eval.ood_image_size: every image decoded and its blocks run again at it)")
  args = ap.parse_args(argv)
  host_memory.configure("auto")  # as predict's main does, before JAX starts

  from cxr_jax import paths

  scratch = Path(tempfile.mkdtemp(prefix="predict_bench_"))
  files = sorted(str(p) for p in paths.default_data_root().rglob("*")
                 if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:args.files]
  workdir = saved_run(args.image_size, scratch / "run")
  if not args.no_ood:
    stored_ood_fit(workdir, image_size=args.ood_image_size)
  cache = scratch / "jax_cache"
  cold = None if args.skip_cold else {
      "empty_compilation_cache_s": cold_run(workdir, files[0], cache, args.dtype),
      "warm_compilation_cache_s": cold_run(workdir, files[0], cache, args.dtype)}
  import jax

  jax.config.update("jax_compilation_cache_dir", str(cache))
  # compiles, fills the cache
  streaming_rates(workdir, files[:2 * args.batch_size], args.batch_size, args.dtype)
  stream, call = streaming_rates(workdir, files, args.batch_size, args.dtype)
  forward = forward_rate(workdir, args.batch_size, args.dtype)
  gflops = vs_pytorch.jax_matmul_gflops(args.dtype)
  ceiling = gflops * 1e9 / forward_flops(args.image_size)
  result = {"machine": machine.describe(), "image_size": args.image_size, "files": len(files),
            "batch_size": args.batch_size, "dtype": args.dtype, "ood_fit": not args.no_ood,
            "ood_image_size": None if args.no_ood else args.ood_image_size,
            "cold_one_image": cold,
            "warm_images_per_s": round(stream, 2), "call_images_per_s": round(call, 2),
            "forward_images_per_s": round(forward, 2), "matmul_gflops": round(gflops, 1),
            "forward_gflop_per_image": round(forward_flops(args.image_size) / 1e9, 2),
            "ceiling_images_per_s": round(ceiling, 2), "warm_share_of_ceiling": round(stream / ceiling, 3),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
  bench_machine.report(result, args.out)


if __name__ == "__main__":
  main()
