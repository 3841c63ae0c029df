"""Where one VGG16 step's time goes: one step traced with `jax.profiler`, XLA's ops grouped by kind.

  python benchmarks/step_profile.py --variant jax:auto:bf16 --what train --trainable-blocks 5 \
      --out benchmarks/results/bf16_step_profile_xeon_amx_after.md

The step is `benchmarks/vs_pytorch.py`'s (the project's own pmapped train step or forward pass,
random data, the config's host allocator). Op events are summed per kind (the name without its
`.N` suffix: `ffi_call` is the AMX convolution, `ynn_fusion` YNNPACK's products and pooling,
`transpose_copy_fusion` layout changes, ...) over the traced step; the step's own wall time is
measured untraced beside it. Markdown with the machine.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Events that wrap ops rather than being ops (runtime frames, Python frames, end markers).
_NOT_OPS = ("ThunkExecutor", "$", "end:", "ThreadpoolListener", "SlinkyThreadPool",
            "CommonPjRt", "PjitFunction", "Handle inputs", "AllocateOutputBuffers")


def op_times(trace_dir: str) -> tuple[collections.Counter, collections.Counter]:
  """Milliseconds and events per op kind in the perfetto trace under trace_dir."""
  path = glob.glob(f"{trace_dir}/**/*perfetto_trace.json.gz", recursive=True)[0]
  events = json.load(gzip.open(path))
  events = events["traceEvents"] if isinstance(events, dict) else events
  ms, count = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") == "X" and not e["name"].startswith(_NOT_OPS):
      kind = re.sub(r"\.\d+$", "", e["name"])
      ms[kind] += e["dur"] / 1e3
      count[kind] += 1
  return ms, count


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--variant", default="jax:auto:bf16", help="a jax variant of vs_pytorch.py")
  ap.add_argument("--what", default="train", choices=("train", "eval"))
  ap.add_argument("--trainable-blocks", type=int, default=5)
  ap.add_argument("--image-size", type=int, default=224)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--out", type=Path)
  args = ap.parse_args(argv)

  from benchmarks import machine, vs_pytorch
  from cxr_jax import host_memory

  spec, malloc = vs_pytorch.split_malloc(args.variant)
  host_memory.configure(malloc)  # before JAX starts its threads, as launch.py does
  import jax
  import numpy as np

  rng = np.random.default_rng(0)
  data = (rng.standard_normal((args.batch, args.image_size, args.image_size, 3)).astype(np.float32),
          rng.integers(0, vs_pytorch.NUM_CLASSES, args.batch).astype(np.int32))
  train_fn, eval_fn = vs_pytorch.jax_variant(spec, args.image_size, args.batch,
                                             args.trainable_blocks, data)
  fn = train_fn if args.what == "train" else eval_fn
  fn(), fn()  # compile and warm up
  start = time.perf_counter()
  for _ in range(3):
    fn()
  step_s = (time.perf_counter() - start) / 3
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      fn()
    ms, count = op_times(tmp)
  total = sum(ms.values())
  info = machine.describe()
  lines = [f"One {args.what} step of VGG16 + head, {args.image_size} px, batch {args.batch}, "
           f"{args.variant}, trainable blocks {args.trainable_blocks}: {step_s:.3f} s untraced "
           f"(mean of 3); {info['cpu']}, {info['cores']} cores ({info.get('isa_level', '?')}: "
           f"{' '.join(info['isa'])}), load average {info['load_average'][0]:.2f}, "
           f"{time.strftime('%Y-%m-%dT%H:%M:%S')}. Op time summed over the traced step "
           f"({total:.0f} ms):", "", "| op kind | ms | share | count |", "| --- | --- | --- | --- |"]
  for kind, t in ms.most_common(15):
    lines.append(f"| `{kind}` | {t:.1f} | {100 * t / total:.1f} % | {count[kind]} |")
  text = "\n".join(lines) + "\n"
  print(text)
  if args.out:
    args.out.write_text(text)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
