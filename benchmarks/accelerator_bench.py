"""The train step's images/s and MFU on the devices JAX sees: VGG16 at fine-tuning degrees FT2 and
FT5, 224 and 800 px (Lee et al.'s size), float32 and bfloat16, the trainer's pmapped step over
every local device (`cxr_jax.train.step` through `vs_pytorch.jax_variant`: RMSprop, the frozen
blocks behind a stop-gradient, `conv_impl="auto"`, which is flax's Conv on GPU and TPU), and the
forward pass alone (evaluation's and prediction's rate). Random images: speed does not depend on
them. One prepared run for a GPU or TPU machine, written to --out after every measurement, so a
run cut short keeps what it measured.

MFU: the step's convolution FLOPs as the model defines them (`vs_pytorch.step_flops`: the forward
pass everywhere, weight and input gradients where trainable; fewer products by Winograd or by
cuDNN's algorithms are not credited) / the measured time per step / a peak, against two peaks:
- `spec`: the device's dense (no sparsity) tensor-unit peak in the dtype from its maker's datasheet
  (`PEAKS`, by `device_kind`); float32 against TF32's, which XLA's convolutions and products use
  for float32 on these GPUs at JAX's default precision (the measured float32 product, above the
  GPU's plain float32 rate, shows whether they did). Null for a device not listed, and on CPU.
- `measured`: an n^3 product in the dtype (float32 accumulation) timed in the same run, the
  practical ceiling (`vs_pytorch.jax_matmul_gflops`), times the local devices.

On a GPU machine (JAX with CUDA installed; of the rest it imports, only ml-collections, the
configs' dependency, was missing from the lent machines' image: carry its wheel, which
`.gitignore`'s /.whl/ keeps out of git):
  python3 -m pip download --no-deps --only-binary=:all: -d .whl ml-collections==1.1.0   # here
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
      && PYTHONPATH=/tmp/site python3 benchmarks/accelerator_bench.py --out "$OUT/accelerator_bench.json"
(~12 compilations of VGG16; save a few minutes of the device's time for them.)
On CPU the same runs (tests/test_benchmarks.py at 32 px); there the per-device batch defaults to 8.
Nothing here imports TensorFlow, clu or orbax (`cxr_jax.train` loads its trainer lazily).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import machine, vs_pytorch  # noqa: E402
from cxr_jax import files  # noqa: E402

# Dense tensor-unit peaks per device in FLOP/s, from the makers' datasheets: (substrings of
# jax.Device.device_kind, all of which must appear) -> {dtype: peak}; the first match counts.
PEAKS = [
    (("H100", "PCIe"), {"bfloat16": 756e12, "float32": 378e12}),
    (("H100",), {"bfloat16": 989e12, "float32": 495e12}),   # SXM5 (device_kind "... HBM3")
    (("H200",), {"bfloat16": 989e12, "float32": 495e12}),
    (("A100",), {"bfloat16": 312e12, "float32": 156e12}),
    (("TPU v4",), {"bfloat16": 275e12}),
    (("TPU v5 lite",), {"bfloat16": 197e12}),
    (("TPU v5p",), {"bfloat16": 459e12}),
]
# Per-device batch by image size on an accelerator (fills an H100's 80 GB well below its limit at
# FT5 in float32); on CPU 8, vs_pytorch's.
ACCELERATOR_BATCH = {224: 128, 800: 16}


def spec_peak(device_kind: str, dtype: str) -> float | None:
  for names, peaks in PEAKS:
    if all(n in device_kind for n in names):
      return peaks.get(dtype)
  return None


def measure(train_fn, steps: int, repeats: int) -> tuple[float, float]:
  """(compile + first step seconds, median seconds per step over `repeats` runs of `steps`)."""
  t0 = time.perf_counter()
  train_fn()
  first = time.perf_counter() - t0
  train_fn()  # a second warm-up: donated buffers and allocator settle
  return first, statistics.median(vs_pytorch.timed(train_fn, steps) for _ in range(repeats))


def main(argv=None) -> dict:
  import jax

  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--sizes", type=int, nargs="+", default=[224, 800])
  ap.add_argument("--degrees", type=int, nargs="+", default=[2, 5], help="trainable blocks (FTk)")
  ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"],
                  choices=["bfloat16", "float32"])
  ap.add_argument("--batch", type=int, default=None,
                  help="per-device batch for every size (default: ACCELERATOR_BATCH, or 8 on CPU)")
  ap.add_argument("--steps", type=int, default=10, help="steps per timed run")
  ap.add_argument("--repeats", type=int, default=3, help="timed runs; the median counts")
  ap.add_argument("--matmul-size", type=int, default=None,
                  help="n of the n^3 ceiling product (default 8192 on accelerators, 2048 on CPU)")
  ap.add_argument("--out", type=Path)
  args = ap.parse_args(argv)

  devices = jax.local_devices()
  kind = devices[0].device_kind
  on_cpu = devices[0].platform == "cpu"
  n_mm = args.matmul_size or (2048 if on_cpu else 8192)
  result = {"machine": machine.describe(), "device_kind": kind, "local_devices": len(devices),
            "default_matmul_precision": jax.config.jax_default_matmul_precision,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "ceiling": {}, "runs": []}

  def save():  # after every measurement: a run cut short keeps what it measured
    if args.out:
      files.write_atomic(args.out, json.dumps(result, indent=2) + "\n")

  for dtype in args.dtypes:
    per_device = vs_pytorch.jax_matmul_gflops(getattr(jax.numpy, dtype), n_mm) * 1e9
    result["ceiling"][dtype] = {"matmul_n": n_mm, "flops_per_s_per_device": per_device,
                                "spec_per_device": spec_peak(kind, dtype)}
  save()
  for dtype in args.dtypes:   # in the order given: bf16 first by default, the figure
    spec = "jax:auto" + (":bf16" if dtype == "bfloat16" else "")
    peaks = {"spec": result["ceiling"][dtype]["spec_per_device"],
             "measured": result["ceiling"][dtype]["flops_per_s_per_device"]}
    for size in args.sizes:
      per = args.batch or (8 if on_cpu else ACCELERATOR_BATCH.get(size, 8))
      batch = per * len(devices)
      rng = np.random.default_rng(0)
      data = (rng.standard_normal((batch, size, size, 3)).astype(np.float32),
              rng.integers(0, vs_pytorch.NUM_CLASSES, batch).astype(np.int32))
      for degree in [*args.degrees, 0]:   # 0: the forward pass alone (eval_fn)
        train_fn, eval_fn = vs_pytorch.jax_variant(spec, size, batch, max(degree, 1), data,
                                                   devices=len(devices))
        first, seconds = measure(train_fn if degree else eval_fn, args.steps, args.repeats)
        flops = vs_pytorch.step_flops(size, batch, degree)
        flops = flops["total"] if degree else flops["forward"]
        result["runs"].append({
            "what": f"FT{degree} train step" if degree else "forward", "image_size": size,
            "dtype": dtype, "batch": batch, "per_device_batch": per,
            "compile_and_first_s": round(first, 2), "step_s": seconds,
            "images_per_s": batch / seconds, "model_flops_per_step": flops,
            "mfu": {k: (None if p is None else flops / seconds / (p * len(devices)))
                    for k, p in peaks.items()}})
        save()
  result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
  machine.report(result, args.out)
  return result


if __name__ == "__main__":
  r = main()
  for run in r["runs"]:
    mfu = " ".join(f"{k} {v:.1%}" for k, v in run["mfu"].items() if v is not None)
    print(f"{run['what']:>16} {run['image_size']:>4} px {run['dtype']:>8} batch {run['batch']:>4}: "
          f"{run['images_per_s']:9.1f} images/s  MFU {mfu}", file=sys.stderr)
