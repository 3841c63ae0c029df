"""What reading a second input size for the out-of-distribution features would cost prediction
(results/ood_quickstart_128px/resolution.md): the forward pass `predict` runs today (every block
and the logits at the run's size, `inference.make_outputs_fn`) against blocks 1-3 alone at a
larger size, and every block at it, on one batch, interleaved rounds in one process.

  python benchmarks/ood_resolution_cost.py --image-size 128 --ood-size 256 \
      --out benchmarks/results/ood_resolution_cost_128_256.json

The run is predict_bench's (VGG16, random weights, the quick start's config: speed does not
depend on the weights).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import machine as bench_machine  # noqa: E402
from benchmarks import vs_pytorch  # noqa: E402
from benchmarks.predict_bench import saved_run  # noqa: E402


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--image-size", type=int, default=128)
  ap.add_argument("--ood-size", type=int, default=256)
  ap.add_argument("--batch-size", type=int, default=32)
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--repeats", type=int, default=4)
  ap.add_argument("--out", type=Path)
  args = ap.parse_args(argv)
  import jax
  import numpy as np

  from cxr_jax import checkpoint
  from cxr_jax.evaluate import compute_variables, make_outputs_fn

  trained = checkpoint.load_trained(saved_run(args.image_size,
                                              Path(tempfile.mkdtemp(prefix="ood_cost_")) / "run"))
  model, variables = trained.model, compute_variables(trained.model, trained.variables)
  outputs_fn = make_outputs_fn(model)
  blocks_1_3 = jax.jit(lambda v, x: model.apply(v, x, train=False, start="input", stop="block3"))
  images = {size: np.zeros((args.batch_size, size, size, 3), np.float32)
            for size in (args.image_size, args.ood_size)}
  variants = {
      f"outputs_{args.image_size}": lambda: outputs_fn(variables, images[args.image_size]),
      f"blocks_1_3_{args.ood_size}": lambda: blocks_1_3(variables, images[args.ood_size]),
      f"outputs_{args.ood_size}": lambda: outputs_fn(variables, images[args.ood_size])}
  steps = {name: (lambda fn=fn: jax.block_until_ready(fn())) for name, fn in variants.items()}
  for step in steps.values():
    step()   # compiles
  seconds = {name: [] for name in steps}
  for _ in range(args.rounds):   # interleaved: a load change hits every variant alike
    for name, step in steps.items():
      seconds[name].append(vs_pytorch.timed(step, args.repeats))
  rate = {name: args.batch_size / float(np.median(s)) for name, s in seconds.items()}
  base = rate[f"outputs_{args.image_size}"]
  result = {"machine": bench_machine.describe(), "image_size": args.image_size,
            "ood_size": args.ood_size, "batch_size": args.batch_size, "rounds": args.rounds,
            "images_per_s": {k: round(v, 2) for k, v in rate.items()},
            "time_relative_to_today": {k: round(base / v, 2) for k, v in rate.items()},
            "predict_forward_with_second_size": round(
                base / rate[f"blocks_1_3_{args.ood_size}"] + 1, 2),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
  bench_machine.report(result, args.out)


if __name__ == "__main__":
  main()
